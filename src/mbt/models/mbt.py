"""MBT: the Multimodal Bottleneck Transformer (Nagrani et al., NeurIPS 2021), equal to Scenic's `mbt/model.py`.

One pre-LN ViT stream per modality. Up to `fusion_layer` the streams are independent; from it on they exchange
information, either through a few shared bottleneck tokens (`use_bottleneck=True`: each modality's block runs on
[own tokens ; bottleneck], and the updated bottleneck copies are averaged) or through vanilla cross-attention
(each modality attends over all tokens). Shapes use B = batch, N = tokens, D = hidden_size.

Which block runs on which tokens in each layer is written down once, in `fusion_plan`: `MBT.forward` walks it, and
so does the attention rollout (`mbt.analysis.rollout`).

Numerics follow the official Flax model exactly: LayerNorm eps 1e-6, tanh-approximated GELU, stochastic depth with
one draw per example and no 1/(1-p) rescaling, CLS tokens prepended before the position embedding, bottleneck tokens
appended after a modality's tokens and without position embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from ..errors import ConfigError, InputError
from .config import FUSION_KINDS, MODALITIES, MBTConfig
from .pretrained import WEIGHTS_NAME, check_state_dict, read_model_dir, save_model_dir

LAYER_NORM_EPS = 1e-6  # Flax nn.LayerNorm default


@dataclass
class MBTOutput:
    """What `MBT.forward` returns, in train and eval mode alike.

    Attributes:
      logits: (B, num_classes). Token head: the mean of `modality_logits` over the modalities present. Pooled
        heads ('gap', 'gmp', 'gsp'): the head's logits.
      modality_logits: token head only: {modality: (B, num_classes)}, one entry per modality present. Training
        averages the per-modality losses over these (as Scenic does); None for pooled heads.
      pre_logits: the pooled features fed to `output_projection`, after the optional `pre_logits` Dense + tanh:
        {modality: (B, R)} (each modality's CLS) for the token head, (B, R) for pooled heads; R =
        representation_size or hidden_size.
      tokens: (B, N, D), the final token sequence after `encoder_norm`: modalities concatenated in
        `modality_fusion` order, CLS tokens included, bottleneck tokens excluded (Scenic's "preclassifier").
      token_slices: {modality: slice} giving each modality's span in `tokens` (CLS first when present).
    """

    logits: Tensor
    modality_logits: dict[str, Tensor] | None
    pre_logits: Tensor | dict[str, Tensor]
    tokens: Tensor
    token_slices: dict[str, slice]
    present: dict[str, Tensor] | None = None
    """{modality: (B,) bool}, True where the example has that stream, when the inputs flagged a stream missing for
    some example (`inputs['missing']`); None when every example has every stream given."""


# ---------------------------------------------------------------------------------------------------- fusion plan
BOTTLENECK = "bottleneck"  # the name of the bottleneck token set in a fusion plan


@dataclass(frozen=True)
class BlockRun:
    """One encoder block applied in one layer.

    Attributes:
      stream: the encoder whose block runs: a modality, or 'shared' (share_encoder).
      queries: the token sets the block runs on and updates, concatenated in this order: modalities and/or
        'bottleneck'.
      context: token sets attended to as keys and values only, placed before the queries (vanilla fusion with
        separate weights: the other modalities, in the fixed order rgb, spectrogram).
    """

    stream: str
    queries: tuple[str, ...]
    context: tuple[str, ...] = ()


@dataclass(frozen=True)
class LayerPlan:
    """The block runs of one layer. Every run reads the tokens the layer receives; a token set that several runs
    update (the bottleneck, one copy per modality) becomes the mean of their outputs."""

    layer: int
    kind: str  # one of FUSION_KINDS
    runs: tuple[BlockRun, ...]


def fusion_plan(config: MBTConfig, present: Sequence[str], training: bool) -> list[LayerPlan]:
    """Per layer, which token sets each block runs on, for the modalities `present` (in modality_fusion order):

      unimodal          each modality's block on its own tokens (before fusion_layer, or no fusion);
      bottleneck        each modality's block on [own tokens ; bottleneck]; the bottleneck copies are averaged;
      vanilla_shared    the shared block on [all modalities' tokens] (one joint sequence);
      vanilla_separate  each modality's block on its own tokens, with the other modalities' tokens as context.
    """
    plan = []
    for layer in range(config.num_layers):
        kind = config.layer_fusion(layer, training)
        assert kind in FUSION_KINDS

        def stream(m: str) -> str:
            return "shared" if config.share_encoder else m

        if kind == "unimodal":
            runs = tuple(BlockRun(stream(m), (m,)) for m in present)
        elif kind == "bottleneck":
            runs = tuple(BlockRun(stream(m), (m, BOTTLENECK)) for m in present)
        elif kind == "vanilla_shared":
            runs = (BlockRun("shared", tuple(present)),)
        else:
            runs = tuple(BlockRun(stream(m), (m,), tuple(o for o in MODALITIES if o != m and o in present))
                         for m in present)
        plan.append(LayerPlan(layer, kind, runs))
    return plan


# ---------------------------------------------------------------------------------------------------- blocks
class Mlp(nn.Module):
    """Dense -> GELU(tanh) -> Dropout -> Dense -> Dropout (Scenic's `MlpBlock`)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, N, D) -> (B, N, D)
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention with Q, K, V packed in one projection (`qkv`, rows q | k | v).

    `record` (attribute, default None): a list to which every call appends its attention weights (B, H, N, M),
    head by head, detached. The weights are computed beside the fused kernel, so the outputs are unchanged;
    `mbt.analysis.rollout` uses it for attention maps.
    """

    def __init__(self, dim: int, num_heads: int, attention_dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.record: list[Tensor] | None = None

    def forward(self, x: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        """Attention of the tokens `x` over the keys [context ; x].

        Args:
          x: (B, N, D) normalised query tokens; they are also keys and values.
          context: (B, M, D) normalised tokens that serve only as keys and values, placed before `x` (as in
            Scenic's vanilla fusion). No queries, and no output, are computed for them.
          key_mask: (B, M + N) bool, True for the keys each example attends to (a stream absent from an example is
            masked out); None: all. Every row must keep at least one key.
        Returns: (B, N, D).
        """
        B, N, D = x.shape
        H, hd = self.num_heads, self.head_dim
        if context is None:
            q, k, v = self.qkv(x).view(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)  # each (B, H, N, hd)
        else:
            w_q, w_kv = self.qkv.weight.split([D, 2 * D])
            b_q, b_kv = self.qkv.bias.split([D, 2 * D])
            q = F.linear(x, w_q, b_q).view(B, N, H, hd).transpose(1, 2)  # (B, H, N, hd)
            kv_in = torch.cat([context, x], dim=1)  # (B, M + N, D)
            k, v = F.linear(kv_in, w_kv, b_kv).view(B, kv_in.shape[1], 2, H, hd).permute(2, 0, 3, 1, 4)
        # Dropout on the attention weights, one mask per element (Flax broadcast_dropout=False).
        p = self.attention_dropout if self.training else 0.0
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, M + N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, H, N, hd)
        if self.record is not None:  # the same weights as the kernel's (before any dropout)
            scores = (q @ k.transpose(-2, -1)).float() * hd ** -0.5
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            self.record.append(torch.softmax(scores, dim=-1).detach())
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class EncoderBlock(nn.Module):
    """Pre-LN transformer block (Scenic's `EncoderBlock`) with per-example stochastic depth.

    x1 = x + drop_path(Dropout(Attention(LN1(x))));  out = x1 + drop_path(Mlp(LN2(x1))).
    drop_path multiplies a branch by (1 - d), d ~ Bernoulli(droplayer_p), one draw per example and per branch, with
    no 1/(1-p) rescaling (Scenic's convention, unlike timm's DropPath).
    """

    def __init__(self, config: MBTConfig, droplayer_p: float) -> None:
        super().__init__()
        d = config.hidden_size
        self.droplayer_p = droplayer_p
        self.norm1 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.attn = Attention(d, config.num_heads, config.attention_dropout_rate)
        self.drop = nn.Dropout(config.dropout_rate)
        self.norm2 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(d, config.mlp_dim, config.dropout_rate)

    def _drop_path(self, y: Tensor) -> Tensor:
        if not self.training or self.droplayer_p == 0.0:
            return y
        keep = torch.empty((y.shape[0],) + (1,) * (y.ndim - 1), dtype=y.dtype, device=y.device)
        return y * keep.bernoulli_(1.0 - self.droplayer_p)

    def forward(self, x: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        """x: (B, N, D). context: (B, M, D) un-normalised tokens attended to as keys/values only (vanilla fusion).
        key_mask: (B, M + N) bool, the keys each example attends to (None: all).
        Returns (B, N, D): the block's output for `x`, equal to running the block on [context ; x] and keeping the
        last N outputs, at the cost of N queries instead of M + N."""
        ctx = None if context is None else self.norm1(context)
        x = x + self._drop_path(self.drop(self.attn(self.norm1(x), ctx, key_mask)))
        return x + self._drop_path(self.mlp(self.norm2(x)))


# ---------------------------------------------------------------------------------------------------- tokens
class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens, as a VALID convolution with stride = kernel (Scenic's `nn.Conv`).

    rgb, '3d_conv':           (B, C, T, H, W) -> Conv3d (t, h, w) -> (B, T/t * H/h * W/w, D), order (t, h, w).
    rgb, 'temporal_sampling': (B, C, T, H, W) -> the sampled frames stacked along H -> Conv2d (h, w).
    spectrogram:              (B, C, time, mel) -> Conv2d (time, mel) -> (B, time/pt * mel/pf, D), time-major.

    The convolution is computed as one matrix multiply over the unfolded patches, which is exact (stride = kernel)
    and faster on CPU than a strided convolution.
    """

    def __init__(self, in_channels: int, dim: int, patch: tuple[int, ...],
                 frame_indices: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.patch = tuple(patch)
        conv = nn.Conv3d if len(patch) == 3 else nn.Conv2d
        self.proj = conv(in_channels, dim, kernel_size=patch, stride=patch)
        if frame_indices is not None:
            self.register_buffer("frame_indices", torch.tensor(frame_indices, dtype=torch.long), persistent=False)
        else:
            self.frame_indices = None

    def forward(self, x: Tensor) -> Tensor:
        if self.frame_indices is not None:  # temporal_sampling: (B, C, T, H, W) -> (B, C, T_s * H, W)
            x = x.index_select(2, self.frame_indices)
            x = x.reshape(x.shape[0], x.shape[1], -1, x.shape[-1])
        B, C = x.shape[:2]
        grid = [s // p for s, p in zip(x.shape[2:], self.patch)]
        x = x[(slice(None), slice(None)) + tuple(slice(0, g * p) for g, p in zip(grid, self.patch))]  # VALID
        if len(self.patch) == 3:
            (gt, gh, gw), (pt, ph, pw) = grid, self.patch
            x = x.reshape(B, C, gt, pt, gh, ph, gw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        else:
            (gh, gw), (ph, pw) = grid, self.patch
            x = x.reshape(B, C, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
        x = x.reshape(B, math.prod(grid), -1)  # (B, N, C * prod(patch)), in the conv weight's (C, *patch) order
        return F.linear(x, self.proj.weight.flatten(1), self.proj.bias)  # (B, N, D)


class Tokenizer(nn.Module):
    """A modality's input -> its token sequence: patch embedding, CLS prepended (token head), position embedding
    added. Output (B, N, D) with N = config.num_tokens(modality)."""

    def __init__(self, config: MBTConfig, modality: str) -> None:
        super().__init__()
        self.modality = modality
        self.expected_shape = config.input_shape(modality)
        if modality == "rgb":
            if config.temporal_encoding == "3d_conv":
                self.patch_embed = PatchEmbed(config.rgb_channels, config.hidden_size, config.rgb_patch_size)
            else:
                self.patch_embed = PatchEmbed(config.rgb_channels, config.hidden_size, config.rgb_patch_size[1:],
                                              frame_indices=config.rgb_frame_indices)
        else:
            self.patch_embed = PatchEmbed(config.spectrogram_channels, config.hidden_size,
                                          config.spectrogram_patch_size)
        d = config.hidden_size
        self.cls = nn.Parameter(torch.zeros(1, 1, d)) if config.classifier == "token" else None
        self.pos_embedding = nn.Parameter(torch.zeros(1, config.num_tokens(modality), d))

    def check_input(self, x: Tensor) -> Tensor:
        """Validate an input batch; a 1-channel spectrogram is broadcast to a model configured with more channels
        (Scenic's pipeline copies the single log-mel channel into 3 identical ones)."""
        want = self.expected_shape
        if (self.modality == "spectrogram" and x.ndim == 4 and x.shape[1] == 1 and want[0] > 1
                and tuple(x.shape[2:]) == want[1:]):
            x = x.expand(-1, want[0], -1, -1)
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
            layout = "(B, C, T, H, W)" if self.modality == "rgb" else "(B, C, time, mel)"
            raise InputError(f"input {self.modality!r} has shape {tuple(x.shape)}; this model takes {layout} = "
                             f"(B, {', '.join(map(str, want))}), channels first (see MBTConfig input geometry)")
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(self.check_input(x))  # (B, N', D)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N' + 1, D)
        return x + self.pos_embedding


# ---------------------------------------------------------------------------------------------------- model
class MBT(nn.Module):
    """The Multimodal Bottleneck Transformer.

    Input: a dict of channels-first float tensors, one per modality in `config.modality_fusion`:
      'rgb':         (B, 3, T, H, W), frames in [-1, 1]; T = num_frames, (H, W) = image_size.
      'spectrogram': (B, C, time, mel), a standardised log-mel spectrogram; (time, mel) = spectrogram_shape.
      'missing' (optional): {modality: (B,) bool}, True where that example lacks the stream (the dataset's flags).
    Other keys (labels) are ignored. A configured modality may be left out (or be None): the model then fuses the
    modalities present and the token head averages their logits. A stream flagged missing for some examples is
    absent for those examples only: its tokens are masked out of the other streams' attention, the bottleneck
    is the mean of the updates of the streams each example has, and the heads average (token) or pool (gap, gmp,
    gsp) only those streams, so each example gets the logits it would get run alone without the stream.

    Output: `MBTOutput`.

    Train vs eval follows Scenic's `train` flag: dropout, attention dropout and stochastic depth act only in
    training, and `test_with_bottlenecks=False` switches off all cross-modal exchange in eval mode.

    `scenic_vanilla_schedule` (attribute, default False): vanilla fusion with separate weights normally computes
    queries and the MLP only for each modality's own tokens; set it to True to run Scenic's literal schedule (each
    modality's block over all tokens, other modalities' outputs discarded). Same result, about twice the cost; kept
    to test and measure the saving.

    `gradient_checkpointing` (attribute, default False): in training, recompute each encoder block's activations in
    the backward pass instead of storing them (torch.utils.checkpoint), trading about a third more compute for
    much less memory. The recomputation replays the same random state, so results are unchanged.
    """

    def __init__(self, config: MBTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.scenic_vanilla_schedule = False
        self.gradient_checkpointing = False
        d, L = config.hidden_size, config.num_layers
        self.tokenizers = nn.ModuleDict({m: Tokenizer(config, m) for m in config.modality_fusion})
        self.bottleneck = nn.Parameter(torch.zeros(1, config.n_bottleneck_tokens, d)) if config.use_bottleneck \
            else None
        streams = ("shared",) if config.share_encoder else config.modality_fusion
        droplayer = [layer / max(L - 1, 1) * config.stochastic_droplayer_rate for layer in range(L)]
        self.encoders = nn.ModuleDict(
            {s: nn.ModuleList(EncoderBlock(config, droplayer[layer]) for layer in range(L)) for s in streams})
        self.encoder_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        r = config.representation_size
        self.pre_logits = nn.Linear(d, r) if r is not None else None
        self.output_projection = nn.Linear(r or d, config.num_classes)
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Scenic's initialisers (reference A.9): xavier-uniform attention and MLP kernels, MLP biases N(0, 1e-6),
        lecun-normal patch and pre_logits kernels, zero CLS, N(0, 0.02) position embeddings and bottleneck, and a
        zero `output_projection`."""
        for module in self.modules():
            if isinstance(module, Attention):
                d = module.proj.in_features
                for w in module.qkv.weight.split(d):  # q, k, v are separate (D, D) kernels in Flax
                    nn.init.xavier_uniform_(w)
                nn.init.zeros_(module.qkv.bias)
                nn.init.xavier_uniform_(module.proj.weight)
                nn.init.zeros_(module.proj.bias)
            elif isinstance(module, Mlp):
                for fc in (module.fc1, module.fc2):
                    nn.init.xavier_uniform_(fc.weight)
                    nn.init.normal_(fc.bias, std=1e-6)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, PatchEmbed):
                _lecun_normal_(module.proj.weight, fan_in=module.proj.weight[0].numel())
                nn.init.zeros_(module.proj.bias)
            elif isinstance(module, Tokenizer):
                if module.cls is not None:
                    nn.init.zeros_(module.cls)
                nn.init.normal_(module.pos_embedding, std=0.02)
        if self.bottleneck is not None:
            nn.init.normal_(self.bottleneck, std=0.02)
        if self.pre_logits is not None:
            _lecun_normal_(self.pre_logits.weight, fan_in=self.pre_logits.in_features)
            nn.init.zeros_(self.pre_logits.bias)
        nn.init.zeros_(self.output_projection.weight)
        nn.init.zeros_(self.output_projection.bias)

    # ------------------------------------------------------------------ forward
    def block(self, modality: str, layer: int) -> EncoderBlock:
        """The encoder block of `modality` at `layer` (the shared one with share_encoder)."""
        return self.encoders["shared" if self.config.share_encoder else modality][layer]

    def _run(self, block: EncoderBlock, x: Tensor, context: Tensor | None = None,
             key_mask: Tensor | None = None) -> Tensor:
        """`block(x, context, key_mask)`, checkpointed when `gradient_checkpointing` is on in training."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, x, context, key_mask, use_reentrant=False)
        return block(x, context, key_mask)

    def present_modalities(self, inputs: Mapping[str, Tensor | None]) -> list[str]:
        """Configured modalities given in `inputs`, in `modality_fusion` order."""
        present = [m for m in self.config.modality_fusion if inputs.get(m) is not None]
        if not present:
            raise InputError(f"no input for any configured modality {list(self.config.modality_fusion)}; "
                             f"got keys {sorted(inputs)}")
        return present

    def fuses(self) -> bool:
        """Whether the streams exchange anything in the current mode (`MBTConfig.fuses`)."""
        return self.config.fuses(self.training)

    def uses_bottleneck(self) -> bool:
        """Whether the bottleneck tokens take part in the forward pass in the current mode."""
        return self.config.uses_bottleneck(self.training)

    def fusion_plan(self, present: Sequence[str]) -> list[LayerPlan]:
        """The block runs of every layer in the current mode (see `fusion_plan`)."""
        return fusion_plan(self.config, present, self.training)

    def _run_block(self, run: BlockRun, layer: int, x: Tensor, context: Tensor | None,
                   key_mask: Tensor | None = None) -> Tensor:
        """One block run: (B, N, D) queries and (B, M, D) context -> (B, N, D); key_mask (B, M + N) or None."""
        block = self.block(run.stream, layer)
        if context is not None and self.scenic_vanilla_schedule:  # Scenic: all tokens are queries
            return self._run(block, torch.cat([context, x], dim=1), None, key_mask)[:, -x.shape[1]:]
        return self._run(block, x, context, key_mask)

    def absent_streams(self, inputs: Mapping[str, object], present: Sequence[str], batch: int) -> dict[str, Tensor]:
        """{modality: (B,) bool, True where that example lacks the stream}, from `inputs['missing']` (the dataset's
        flags), for the modalities given whose flag is set for some example; {} when every example has every
        given stream (the forward pass is then the unmasked one, bit for bit)."""
        flags = inputs.get("missing") or {}
        if not isinstance(flags, Mapping):
            raise InputError(f"inputs['missing'] must map modalities to (B,) bool tensors, got {type(flags).__name__}")
        absent = {}
        for m in present:
            flag = flags.get(m)
            if flag is None:
                continue
            flag = torch.as_tensor(flag, dtype=torch.bool, device=self.output_projection.weight.device).reshape(-1)
            if flag.shape[0] != batch:
                raise InputError(f"inputs['missing'][{m!r}] has {flag.shape[0]} flags for a batch of {batch}")
            if bool(flag.any()):
                absent[m] = flag
        if absent:
            none_left = torch.stack([absent.get(m, torch.zeros_like(flag)) for m in present]).all(dim=0)
            if bool(none_left.any()):
                rows = none_left.nonzero().flatten().tolist()
                raise InputError(f"example(s) {rows[:5]} of the batch lack every stream given ({list(present)}): "
                                 "nothing to classify them from; leave them out of the batch")
        return absent

    def forward(self, inputs: Mapping[str, Tensor | None]) -> MBTOutput:
        present = self.present_modalities(inputs)
        tokens = {m: self.tokenizers[m](inputs[m]) for m in present}  # {m: (B, N_m, D)}
        batch_sizes = {m: t.shape[0] for m, t in tokens.items()}
        if len(set(batch_sizes.values())) != 1:
            raise InputError(f"inputs have different batch sizes: {batch_sizes}")
        n_tokens = {m: t.shape[1] for m, t in tokens.items()}
        B = batch_sizes[present[0]]
        absent = self.absent_streams(inputs, present, B)  # {m: (B,) bool}; {} when every example has every stream
        # {m: (B,) bool}, True where the example has stream m (None: every example has every stream)
        keep = {m: ~absent[m] if m in absent else torch.ones_like(next(iter(absent.values()))) for m in present} \
            if absent else None
        key_masks: dict[BlockRun, Tensor | None] = {}  # the same runs recur layer after layer
        if self.uses_bottleneck():
            tokens[BOTTLENECK] = self.bottleneck.expand(B, -1, -1)  # (B, n_b, D)

        for step in self.fusion_plan(present):
            updates: dict[str, list[tuple[str, Tensor]]] = {}
            for run in step.runs:
                x = _join([tokens[q] for q in run.queries])  # (B, N, D)
                context = _join([tokens[c] for c in run.context]) if run.context else None
                if run not in key_masks:
                    key_masks[run] = _key_mask(run, absent, keep, tokens)
                out = self._run_block(run, step.layer, x, context, key_masks[run])
                for q, part in zip(run.queries, out.split([tokens[q].shape[1] for q in run.queries], dim=1)):
                    updates.setdefault(q, []).append((run.queries[0], part))
            for q, parts in updates.items():  # the bottleneck: the mean of the modalities' updated copies
                tokens[q] = _mean_of_present(parts, keep)

        final = self.encoder_norm(torch.cat([tokens[m] for m in present], dim=1))  # (B, N, D)
        slices, start = {}, 0
        for m in present:
            slices[m] = slice(start, start + n_tokens[m])
            start += n_tokens[m]
        return self._head(final, slices, keep)

    def _head(self, tokens: Tensor, slices: dict[str, slice], present: Mapping[str, Tensor] | None) -> MBTOutput:
        """The head on the final tokens; `present` {m: (B,) bool} restricts each example to its streams."""
        cfg = self.config
        if cfg.classifier == "token":
            feats = {m: tokens[:, s.start] for m, s in slices.items()}  # each modality's CLS, (B, D)
            if self.pre_logits is not None:  # one shared Dense + tanh
                feats = {m: torch.tanh(self.pre_logits(f)) for m, f in feats.items()}
            modality_logits = {m: self.output_projection(f) for m, f in feats.items()}  # shared projection
            if present is None:
                logits = sum(modality_logits.values()) / len(modality_logits)
            else:  # per example, the mean over the modalities it has
                w = {m: present[m].to(tokens.dtype)[:, None] for m in modality_logits}
                logits = sum(lg * w[m] for m, lg in modality_logits.items()) / sum(w.values())
            return MBTOutput(logits, modality_logits, feats, tokens, slices, present)
        if present is None:
            if cfg.classifier == "gap":
                pooled = tokens.mean(dim=1)
            elif cfg.classifier == "gmp":
                pooled = tokens.amax(dim=1)
            else:  # gsp
                pooled = tokens.sum(dim=1)
        else:  # pool each example's tokens of the modalities it has
            keep = torch.cat([present[m][:, None].expand(-1, s.stop - s.start) for m, s in slices.items()], dim=1)
            if cfg.classifier == "gmp":
                pooled = tokens.masked_fill(~keep[..., None], float("-inf")).amax(dim=1)
            else:
                pooled = (tokens * keep[..., None].to(tokens.dtype)).sum(dim=1)
                if cfg.classifier == "gap":
                    pooled = pooled / keep.sum(dim=1, keepdim=True).to(tokens.dtype)
        if self.pre_logits is not None:
            pooled = torch.tanh(self.pre_logits(pooled))
        return MBTOutput(self.output_projection(pooled), None, pooled, tokens, slices, present)

    # ------------------------------------------------------------------ model directories
    def save_pretrained(self, directory: str | Path, data_config=None) -> Path:
        """Write `config.json` and `model.safetensors` to `directory` (created if needed), and with `data_config`
        (an `mbt.data.DataConfig`) its `preprocessor_config.json`, so the model keeps the inputs it was trained on."""
        return save_model_dir(self, directory, data_config=data_config)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "MBT":
        """Load a model directory written by `save_pretrained`, `mbt train` or `mbt convert` (eval mode).
        `mbt.data.load_pretrained(directory)` also reads its preprocessor_config.json."""
        config, state = read_model_dir(directory, map_location)
        model = cls(config)
        check_state_dict(model.state_dict(), state, str(Path(directory) / WEIGHTS_NAME))
        model.load_state_dict(state)
        return model.to(map_location).eval()


def _key_mask(run: BlockRun, absent: Mapping[str, Tensor], keep: Mapping[str, Tensor] | None,
              tokens: Mapping[str, Tensor]) -> Tensor | None:
    """(B, M + N) bool over the keys [context ; queries] of a block run: False on the tokens of a modality that an
    example lacks, except the run's own modality (a separate-weights run for an absent stream computes outputs that
    are discarded; masking its own keys would leave it none). None when nothing is masked."""
    owner = None if len(run.queries) > 1 and BOTTLENECK not in run.queries else run.queries[0]
    masked = [s for s in run.context + run.queries if s in absent and s != owner]
    if not masked:
        return None
    everyone = torch.ones_like(keep[masked[0]])
    parts = [(keep[s] if s in masked else everyone)[:, None].expand(-1, tokens[s].shape[1])
             for s in run.context + run.queries]
    return torch.cat(parts, dim=1)


def _mean_of_present(parts: list[tuple[str, Tensor]], keep: Mapping[str, Tensor] | None) -> Tensor:
    """The new value of a token set from the runs that updated it, [(the run's modality, (B, n, D))]: the output
    itself for one run; for the bottleneck (one copy per modality) the mean over the modalities each example has."""
    if len(parts) == 1:
        return parts[0][1]
    if keep is None:
        return torch.stack([p for _, p in parts], dim=-1).mean(dim=-1)
    w = [keep[m].to(p.dtype)[:, None, None] for m, p in parts]
    return sum(p * wi for (_, p), wi in zip(parts, w)) / sum(w)


def _join(parts: list[Tensor]) -> Tensor:
    """Token sets concatenated along the token axis; a single set as it is (torch.cat would copy it)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


@torch.no_grad()
def _lecun_normal_(weight: Tensor, fan_in: int) -> None:
    """Flax `lecun_normal`: a normal truncated at 2 std, scaled so the variance is 1 / fan_in."""
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


__all__ = ["MBT", "MBTOutput", "EncoderBlock", "Attention", "Mlp", "PatchEmbed", "Tokenizer", "ConfigError", "BlockRun",
           "LayerPlan", "fusion_plan", "BOTTLENECK"]
