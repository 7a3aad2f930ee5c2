"""Read an AST (Audio Spectrogram Transformer, Gong et al. 2021, github.com/YuanGongND/ast) checkpoint as a
`ViTWeights` in the spectrogram stream's layout, so that it can initialise that stream (`mbt.weights.streams`).

AST is a DeiT ViT applied to a (freq, time) fbank image: its `ASTModel` wraps a timm DeiT as `v`, and the released
checkpoints (e.g. `audioset_10_10_0.4593.pth`, saved from `nn.DataParallel`) hold

    module.v.cls_token, module.v.dist_token         (1, 1, D)        a class and a distillation token
    module.v.pos_embed                              (1, 2 + F*T, D)  their positions, then the F x T patch grid,
                                                                     frequency-major (F = 12, T = 101 for 128 mel
                                                                     bins x 1024 frames at stride 10)
    module.v.patch_embed.proj.weight                (D, 1, 16, 16)   kernel over (freq, time); stride 10 (overlap)
    module.v.blocks.<i>.{norm1,attn.qkv,...}                         timm blocks, the same as mbt's
    module.v.norm                                                    the final LayerNorm
    module.v.head, module.v.head_dist                                DeiT's ImageNet heads (unused by AST)
    module.mlp_head.0 (LayerNorm), module.mlp_head.1 (Linear)        AST's classifier

AST feeds the spectrogram as (B, 1, freq, time) and mbt as (B, C, time, mel), so the kernel's last two axes are
swapped and the position grid is transposed to (time, mel); rows and columns keep their order (low mel bins first,
as in both front ends). AST classifies from the mean of its two tokens' outputs; MBT has one class token per
modality, which gets the mean of the two tokens and of their positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from ..errors import CheckpointError
from .vit import ViTWeights, _check_consistent, _unwrap_timm, load_weights_file, timm_blocks

# AST's input features (src/dataloader.py): Kaldi fbank, 128 mel bins, 10 ms shift, normalised as (x - mean) / (2 std)
# with AudioSet's mean -4.2677393 and std 4.5689974 (mbt.data's 'kaldi_fbank' front end); the report says so.
AST_FEATURES = ("AST was trained on Kaldi fbank features (128 mel bins, 10 ms shift) normalised to "
                "(x + 4.27) / (2 x 4.57): data.front_end {name: kaldi_fbank} gives those; the default logmel front "
                "end does not")


def is_ast_state(state: Mapping[str, Any]) -> bool:
    """True for an AST state dict (bare, wrapped in {'state_dict': ...} / {'model': ...}, or with DataParallel's
    'module.' prefix)."""
    try:
        keys = set(_unwrap_timm(state, ""))
    except CheckpointError:  # entries that are not tensors: not an AST (the ViT reader names the problem)
        return False
    return "v.pos_embed" in keys and "v.patch_embed.proj.weight" in keys


def read_ast_checkpoint(path: str | Path, freq_patches: int | None = None) -> ViTWeights:
    """Read an AST checkpoint file (.pth read with weights_only=True, or .safetensors) into a `ViTWeights` whose
    `posemb_grid` is (time patches, mel patches, D) and `patch_weight` (D, 1, time, mel); format 'ast'.

    freq_patches: F, the frequency rows of AST's patch grid. None infers it: the grid of 128 mel bins cut into
      16-bin patches at the one stride s in 1..16 for which F = (128 - 16) // s + 1 divides the number of patches
      (F = 12, stride 10, for the released models). Give it for an AST trained on another number of mel bins.
    """
    kind, raw = load_weights_file(path)
    if kind != "state" or not is_ast_state(raw):
        raise CheckpointError(f"{path}: not an AST checkpoint (no 'v.pos_embed' and 'v.patch_embed.proj.weight'); "
                              "give the state dict of an ASTModel (github.com/YuanGongND/ast)")
    return ast_from_state(raw, str(path), freq_patches)


def ast_from_state(state: Mapping[str, Any], source: str, freq_patches: int | None = None) -> ViTWeights:
    """An AST state dict (see the module docstring) -> `ViTWeights` in mbt's spectrogram layout."""
    state = _unwrap_timm(state, source)
    t = {k[2:]: v.detach().to(torch.float32).contiguous() for k, v in state.items() if k.startswith("v.")}
    ignored = sorted(k for k in state if not k.startswith("v."))
    for key in ("pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "norm.weight",
                "norm.bias"):
        if key not in t:
            raise CheckpointError(f"{source}: missing 'v.{key}'; the AST state dict is incomplete")
    kernel = t["patch_embed.proj.weight"]  # (D, 1, 16 freq, 16 time)
    if kernel.ndim != 4:
        raise CheckpointError(f"{source}: v.patch_embed.proj.weight has shape {tuple(kernel.shape)}; expected "
                              "(D, 1, 16, 16)")
    n_tokens = 1 + ("dist_token" in t)
    pos = t["pos_embed"]
    if pos.ndim != 3 or pos.shape[1] <= n_tokens:
        raise CheckpointError(f"{source}: v.pos_embed has shape {tuple(pos.shape)}; expected (1, {n_tokens} + "
                              "patches, D)")
    n_patches = pos.shape[1] - n_tokens
    f = freq_patches if freq_patches is not None else _infer_freq_patches(n_patches, kernel.shape[2], source)
    if f <= 0 or n_patches % f:
        raise CheckpointError(f"{source}: {n_patches} patch positions cannot be {f} frequency rows; give the "
                              "AST's frequency patch count (freq_patches)")
    grid = pos[0, n_tokens:].reshape(f, n_patches // f, -1).transpose(0, 1).contiguous()  # (time, mel, D)

    notes = [f"AST position grid {f} (freq) x {n_patches // f} (time) of overlapping patches read as "
             f"{n_patches // f} (time) x {f} (mel)", AST_FEATURES]
    cls, posemb_cls = t["cls_token"], pos[:, :1]
    if "dist_token" in t:
        cls = (t["cls_token"] + t["dist_token"]) / 2
        posemb_cls = pos[:, :2].mean(dim=1, keepdim=True)
        notes.append("AST's class and distillation tokens (and their positions) averaged into the one class "
                     "token (AST classifies from the mean of their outputs)")
    dropped = [k for k in ("head.weight", "head_dist.weight") if k in t]
    if dropped or ignored:
        notes.append("not used: AST's classifier (" + ", ".join(ignored[:2] + [f"v.{k}" for k in dropped])
                     + "): the model's head is new")
    vit = ViTWeights(
        blocks=timm_blocks(t, source), encoder_norm={"weight": t["norm.weight"], "bias": t["norm.bias"]},
        patch_weight=kernel.transpose(2, 3).contiguous(),  # (D, C, freq, time) -> (D, C, time, mel)
        patch_bias=t["patch_embed.proj.bias"], cls=cls, posemb_cls=posemb_cls, posemb_grid=grid,
        pre_logits=None, head=None, source=source, format="ast", num_heads=None, notes=notes)
    _check_consistent(vit)
    return vit


def _infer_freq_patches(n_patches: int, patch: int, source: str, mel_bins: int = 128) -> int:
    fits = sorted({(mel_bins - patch) // s + 1 for s in range(1, patch + 1)
                   if n_patches % ((mel_bins - patch) // s + 1) == 0})
    if len(fits) != 1:
        raise CheckpointError(f"{source}: cannot tell the AST's frequency patch rows from its {n_patches} positions "
                              f"(candidates for {mel_bins} mel bins: {fits or 'none'}); give freq_patches")
    return fits[0]


__all__ = ["read_ast_checkpoint", "ast_from_state", "is_ast_state", "AST_FEATURES"]
