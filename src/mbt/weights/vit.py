"""Initialise an MBT model from an ImageNet ViT classifier, as Scenic's `initialise_from_train_state` does.

Two steps, both usable on their own:

* `read_vit_checkpoint(path) -> ViTWeights`: a ViT checkpoint in any of the formats people have, detected from the
  file's bytes, brought to one torch layout:
    - `.npz` of google-research/vision_transformer (`Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1`,
      ...), of big_vision (`params/` prefix, modules numbered per class, top-level `pos_embedding`, optionally the
      scanned `Transformer/encoderblock/...` with a leading layer axis) and of Scenic (`opt/target/` prefix);
    - timm state dicts: `.safetensors`, or `.pth`/`.pt`/`.bin` read with `torch.load(weights_only=True)` (never a
      plain unpickle), possibly wrapped in {'state_dict': ...} / {'model': ...} and with a 'module.' prefix.
* `init_from_vit(model, checkpoint) -> ViTInitReport`: writes the ViT into the model in place (reference C):
  every block into the same layer of every stream, the encoder norm, the position embeddings resized bilinearly and
  tiled over time, the bottleneck tokens from the position embedding, the patch kernel inflated to 3-D, the CLS
  token, and optionally pre_logits and the classifier.

Its planning steps (`plan_vit_init`, `plan_blocks`, `plan_tokenizer`, `plan_bottleneck`, then `write_init`) also
serve `mbt.weights.streams`, which gives each stream its own source.

Flax layouts (reference B.4): Dense kernel (in, out); conv kernel (h, w, C_in, C_out); attention q/k/v kernel
(D, heads, head_dim) and bias (heads, head_dim); attention out kernel (heads, head_dim, D).
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ..errors import CheckpointError
from .scenic import _to_torch, flatten_params

if TYPE_CHECKING:
    from ..models.config import MBTConfig
    from ..models.mbt import MBT

FORMATS = ("vision_transformer", "big_vision", "timm", "ast")
KERNEL_INITS = ("central_frame", "average", "average_arp")
_KERNEL_INIT_ALIASES = {  # Scenic's kernel_init_method names
    "central_frame_initializer": "central_frame", "average_frame_initializer": "average",
    "average_arp_frame_initializer": "average_arp"}

# The keys of one mbt EncoderBlock's state dict, in order. ViTWeights.blocks[i] holds exactly these.
BLOCK_KEYS = (
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
)


# ---------------------------------------------------------------------------------------------------- ViTWeights
@dataclass(eq=False)
class ViTWeights:
    """A ViT classifier in torch layout (float32), whatever file it came from.

    Attributes:
      blocks: per layer, a dict keyed exactly as an mbt `EncoderBlock` state dict (see `BLOCK_KEYS`); attn.qkv
        packs rows q | k | v, (3D, D).
      encoder_norm: {'weight', 'bias'} of the final LayerNorm (a timm `fc_norm` lands here too, see `notes`).
      patch_weight: (D, C, ph, pw) patch-embedding kernel; patch_bias: (D,).
      cls: (1, 1, D) class token, None for a ViT without one.
      posemb_cls: (1, 1, D) position of the class token; zeros when the ViT has a class token that gets no position
        (timm `no_embed_class`, big_vision), which is what such a ViT computes. None without a class token.
      posemb_grid: (gh, gw, D) the patch positions as a grid (square for an image ViT).
      pre_logits: {'weight' (R, D), 'bias' (R,)} of the Dense + tanh representation layer, or None.
      head: {'weight' (C, R or D), 'bias' (C,)} of the classifier, or None.
      source: the file read; format: 'vision_transformer' | 'big_vision' | 'timm' | 'ast' (an audio
        spectrogram transformer, `mbt.weights.ast`: its grid is (time, mel) and its kernel (D, 1, time, mel)).
      num_heads: from the q kernel (D, heads, head_dim) of npz files; None for timm, which does not store it.
      notes: things worth telling the user about this checkpoint (carried into the init report).
    """

    blocks: list[dict[str, Tensor]]
    encoder_norm: dict[str, Tensor]
    patch_weight: Tensor
    patch_bias: Tensor
    cls: Tensor | None
    posemb_cls: Tensor | None
    posemb_grid: Tensor
    pre_logits: dict[str, Tensor] | None
    head: dict[str, Tensor] | None
    source: str
    format: str
    num_heads: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def hidden_size(self) -> int:
        return self.encoder_norm["weight"].shape[0]

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def mlp_dim(self) -> int:
        return self.blocks[0]["mlp.fc1.weight"].shape[0]

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.patch_weight.shape[2:])

    @property
    def in_channels(self) -> int:
        return self.patch_weight.shape[1]

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.posemb_grid.shape[:2])

    @property
    def num_classes(self) -> int | None:
        return None if self.head is None else self.head["weight"].shape[0]

    def state_dict(self) -> dict[str, Tensor]:
        """Every tensor under a flat name ('blocks.0.norm1.weight', 'posemb_grid', 'head.weight', ...)."""
        out: dict[str, Tensor] = {}
        for i, block in enumerate(self.blocks):
            out.update({f"blocks.{i}.{k}": v for k, v in block.items()})
        out.update({f"encoder_norm.{k}": v for k, v in self.encoder_norm.items()})
        for name in ("patch_weight", "patch_bias", "cls", "posemb_cls", "posemb_grid"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for name in ("pre_logits", "head"):
            if getattr(self, name) is not None:
                out.update({f"{name}.{k}": v for k, v in getattr(self, name).items()})
        return out

    def describe(self) -> str:
        heads = self.num_heads if self.num_heads is not None else "?"
        return (f"ViT ({self.format}) D={self.hidden_size}, {self.num_layers} layers, {heads} heads, MLP "
                f"{self.mlp_dim}, patch {self.patch_size[0]}x{self.patch_size[1]}, grid "
                f"{self.grid_size[0]}x{self.grid_size[1]}, "
                f"{'class token' if self.cls is not None else 'no class token'}, "
                f"head {'-' if self.head is None else tuple(self.head['weight'].shape)}")


# ---------------------------------------------------------------------------------------------------- reading
def read_vit_checkpoint(path: str | Path) -> ViTWeights:
    """Read a ViT classifier checkpoint; the format is detected from the file's bytes, not its name.

    Accepts an npz (vision_transformer, big_vision per-layer or scanned, Scenic 'opt/target/'), a safetensors file,
    a torch.save file (read with weights_only=True), or a folder holding model.safetensors / pytorch_model.bin.
    Raises CheckpointError naming the file and what to do for a missing, unreadable or non-ViT file, an unsupported
    ViT feature (naming its key) or inconsistent shapes.
    """
    path = Path(path)
    if path.is_dir():
        inside = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        if not inside:
            raise CheckpointError(f"{path}: a folder without model.safetensors or pytorch_model.bin; give the ViT "
                                  "checkpoint file itself (.npz, .safetensors, .pth)")
        path = inside[0]
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; give the path of a ViT checkpoint (.npz from "
                              "vision_transformer/big_vision/Scenic, or a timm .safetensors/.pth)")
    kind, raw = load_weights_file(path)
    return vit_from_raw(kind, raw, str(path))


def load_weights_file(path: str | Path) -> tuple[str, dict[str, Any]]:
    """('npz', {flax key: array}) or ('state', {torch key: tensor}) from an npz, safetensors or torch.save file
    (detected from its bytes; torch files read with weights_only=True). CheckpointError names the file."""
    path = Path(path)
    kind = _sniff(path)
    if kind == "npz":
        return "npz", _load_npz(path)
    return "state", (_load_safetensors(path) if kind == "safetensors" else _load_torch(path))


def vit_from_raw(kind: str, raw: Mapping[str, Any], source: str) -> ViTWeights:
    """A ViT from what `load_weights_file` read: Flax npz keys, or a timm state dict."""
    if kind == "npz":
        return _vit_from_flax(raw, source)
    return _vit_from_timm(raw, source)


def _sniff(path: Path) -> str:
    """'npz' | 'safetensors' | 'torch', from the first bytes (a torch.save file is a zip too, holding data.pkl)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"{path}: empty file, not a ViT checkpoint")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{path}: a damaged zip file ({e}); download the checkpoint again") from None
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        raise CheckpointError(f"{path}: a zip file that is neither an .npz nor a torch.save file "
                              f"(members: {names[:5]})")
    if len(head) >= 9:
        n = int.from_bytes(head[:8], "little")  # safetensors: u64 header length, then the JSON header
        if 2 <= n <= path.stat().st_size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head[0] == 0x80:  # a pickle protocol >= 2: the legacy (non-zip) torch.save format
        return "torch"
    raise CheckpointError(f"{path}: not a ViT checkpoint (neither npz, safetensors nor a torch.save file); give "
                          "a vision_transformer/big_vision .npz or a timm .safetensors/.pth")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:  # object arrays would need pickle: refuse them
            return {k: np.asarray(z[k]) for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable npz ({type(e).__name__}: {e})") from None


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _load_torch(path: Path) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # never a plain unpickle: no code runs
    except pickle.UnpicklingError as e:
        # torch's message is long; its 'Unsupported global: GLOBAL x.y' names what the file wanted to run.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"it asks for {found.group(1)}" if found else str(e).strip().splitlines()[0][:200]
        raise CheckpointError(
            f"{path}: refused: the file holds objects other than tensors, which torch.load(weights_only=True) does "
            f"not load ({what}). Re-save only the state dict (torch.save(model.state_dict(), ...)) or use "
            "safetensors") from None
    except Exception as e:  # truncated zips, bad magic numbers, ...
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict; save the ViT's "
                              "state_dict()")
    return dict(obj)


# ---------------------------------------------------------------------------------------------------- flax (npz)
def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def convert_pre_linen(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Renumber modules per class, level by level, as flax's `checkpoints.convert_pre_linen` does.

    Pre-Linen Flax numbered submodules across classes (LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2,
    MlpBlock_3); Linen numbers each class from 0 (LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1,
    MlpBlock_0). Names are taken in natural order, so encoderblock_10 stays after encoderblock_9.
    """
    out: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for name in sorted(tree, key=_natural_key):
        value = tree[name]
        m = re.match(r"^(.*)_(\d+)$", name)
        if m:
            prefix = m.group(1)
            new = f"{prefix}_{counts.get(prefix, 0)}"
            counts[prefix] = counts.get(prefix, 0) + 1
            name = new
        out[name] = convert_pre_linen(value) if isinstance(value, Mapping) else value
    return out


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _strip_prefix(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep the parameters: under 'opt/target/' (Scenic) or 'params/' (big_vision), else all keys."""
    for prefix in ("opt/target/", "params/"):
        if any(k.startswith(prefix) for k in flat):
            flat = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
    return dict(flat)


_BLOCK_FLAX = {  # torch key -> (flax keys inside the block, conversion kind of scenic._to_torch)
    "norm1.weight": (("LayerNorm_0/scale",), "copy"),
    "norm1.bias": (("LayerNorm_0/bias",), "copy"),
    "attn.qkv.weight": (tuple(f"MultiHeadDotProductAttention_0/{n}/kernel" for n in ("query", "key", "value")),
                        "qkv_kernel"),
    "attn.qkv.bias": (tuple(f"MultiHeadDotProductAttention_0/{n}/bias" for n in ("query", "key", "value")),
                      "qkv_bias"),
    "attn.proj.weight": (("MultiHeadDotProductAttention_0/out/kernel",), "out_kernel"),
    "attn.proj.bias": (("MultiHeadDotProductAttention_0/out/bias",), "copy"),
    "norm2.weight": (("LayerNorm_1/scale",), "copy"),
    "norm2.bias": (("LayerNorm_1/bias",), "copy"),
    "mlp.fc1.weight": (("MlpBlock_0/Dense_0/kernel",), "dense"),
    "mlp.fc1.bias": (("MlpBlock_0/Dense_0/bias",), "copy"),
    "mlp.fc2.weight": (("MlpBlock_0/Dense_1/kernel",), "dense"),
    "mlp.fc2.bias": (("MlpBlock_0/Dense_1/bias",), "copy"),
}

# Top-level parameters of a ViT classifier we understand (after renumbering); anything else is an unsupported
# feature. Known ones get an explanation.
_FLAX_TOP = {"embedding/kernel", "embedding/bias", "cls", "Transformer/posembed_input/pos_embedding",
             "pos_embedding", "Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias", "head/kernel",
             "head/bias", "pre_logits/kernel", "pre_logits/bias"}
_FLAX_FEATURES = {"MAPHead": "attention-pooling ('map') head", "conv_root": "ResNet-hybrid stem",
                  "block1": "ResNet-hybrid stem", "gn_root": "ResNet-hybrid stem"}


def _tensor(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _vit_from_flax(flat: Mapping[str, np.ndarray], source: str) -> ViTWeights:
    params = flatten_params(convert_pre_linen(_nest(_strip_prefix(flat))))
    if "embedding/kernel" not in params or "Transformer/encoder_norm/scale" not in params:
        raise CheckpointError(f"{source}: not a ViT checkpoint: no 'embedding/kernel' and "
                              f"'Transformer/encoder_norm/scale' (keys start with: "
                              f"{sorted({k.split('/')[0] for k in params})[:10]}); give a ViT classifier npz")
    per_layer = _flax_block_params(params, source)

    unknown = sorted(k for k in params if k not in _FLAX_TOP and not k.startswith("Transformer/encoderblock"))
    if unknown:
        why = next((f" ({v})" for u in unknown for k, v in _FLAX_FEATURES.items() if k in u), "")
        raise CheckpointError(f"{source}: unsupported ViT parameter(s) {unknown[:6]}{why}; only the plain ViT "
                              "classifier (token or pooled head, learned position embedding) is supported")

    blocks, num_heads = [], None
    for i, block in enumerate(per_layer):
        out = {}
        for torch_key, (flax_keys, kind) in _BLOCK_FLAX.items():
            missing = [k for k in flax_keys if k not in block]
            if missing:
                raise CheckpointError(f"{source}: encoder block {i} has no {missing[0]!r}; the checkpoint is "
                                      "incomplete or not a ViT")
            arrays = [np.asarray(block[k], dtype=np.float32) for k in flax_keys]
            if kind == "qkv_kernel":
                if any(a.ndim != 3 for a in arrays):
                    raise CheckpointError(f"{source}: block {i} {flax_keys[0]} has shape {arrays[0].shape}; "
                                          "expected (D, heads, head_dim)")
                num_heads = arrays[0].shape[1]
            out[torch_key] = _tensor(_to_torch(kind, arrays))
        extra = sorted(set(block) - {k for keys, _ in _BLOCK_FLAX.values() for k in keys})
        if extra:
            raise CheckpointError(f"{source}: unsupported parameter(s) in encoder block {i}: {extra[:4]}; only the "
                                  "plain pre-LN ViT block is supported")
        blocks.append(out)

    kernel = np.asarray(params["embedding/kernel"])
    if kernel.ndim != 4:
        raise CheckpointError(f"{source}: embedding/kernel has shape {kernel.shape}; expected (ph, pw, C, D) of "
                              "a 2-D ViT")
    pos_key = "pos_embedding" if "pos_embedding" in params else "Transformer/posembed_input/pos_embedding"
    if pos_key not in params:
        raise CheckpointError(f"{source}: no learned position embedding ('Transformer/posembed_input/pos_embedding' "
                              "or 'pos_embedding'); ViTs with fixed sin-cos position embeddings are not supported")
    cls = _tensor(params["cls"]) if "cls" in params else None
    posemb_cls, posemb_grid, notes = _split_posemb(_tensor(params[pos_key]), cls, source, pos_key)

    def need(key: str) -> Tensor:
        if key not in params:
            raise CheckpointError(f"{source}: missing {key!r}; the checkpoint is incomplete")
        return _tensor(params[key])

    def dense(name: str) -> dict[str, Tensor] | None:  # Flax kernel (in, out) -> torch weight (out, in)
        if f"{name}/kernel" not in params:
            return None
        return {"weight": need(f"{name}/kernel").T.contiguous(), "bias": need(f"{name}/bias")}

    vit = ViTWeights(
        blocks=blocks,
        encoder_norm={"weight": need("Transformer/encoder_norm/scale"), "bias": need("Transformer/encoder_norm/bias")},
        patch_weight=_tensor(_to_torch("conv", [kernel])),  # (ph, pw, C, D) -> (D, C, ph, pw)
        patch_bias=need("embedding/bias"),
        cls=cls, posemb_cls=posemb_cls, posemb_grid=posemb_grid,
        pre_logits=dense("pre_logits"), head=dense("head"),
        source=source, format="big_vision" if pos_key == "pos_embedding" else "vision_transformer",
        num_heads=num_heads, notes=notes)
    _check_consistent(vit)
    return vit


def _flax_block_params(params: Mapping[str, np.ndarray], source: str) -> list[dict[str, np.ndarray]]:
    """The encoder blocks as a list of {'LayerNorm_0/scale': array, ...}, from per-layer keys
    ('Transformer/encoderblock_{i}/...') or big_vision's scanned ones ('Transformer/encoderblock/...', each array
    with a leading layer axis)."""
    per_layer: dict[int, dict[str, np.ndarray]] = {}
    scanned: dict[str, np.ndarray] = {}
    for key, value in params.items():
        m = re.match(r"^Transformer/encoderblock(?:_(\d+))?/(.+)$", key)
        if not m:
            continue
        if m.group(1) is None:
            scanned[m.group(2)] = np.asarray(value)
        else:
            per_layer.setdefault(int(m.group(1)), {})[m.group(2)] = np.asarray(value)
    if scanned and per_layer:
        raise CheckpointError(f"{source}: has both scanned ('Transformer/encoderblock/') and per-layer encoder "
                              "blocks; not a single ViT")
    if scanned:
        depths = {v.shape[0] if v.ndim else 0 for v in scanned.values()}
        if len(depths) != 1:
            raise CheckpointError(f"{source}: scanned encoder blocks have different leading (layer) sizes "
                                  f"{sorted(depths)}")
        return [{k: v[i] for k, v in scanned.items()} for i in range(depths.pop())]
    if not per_layer:
        raise CheckpointError(f"{source}: no encoder blocks ('Transformer/encoderblock_<i>/...'); not a ViT")
    if sorted(per_layer) != list(range(len(per_layer))):
        raise CheckpointError(f"{source}: encoder blocks are not numbered 0..{len(per_layer) - 1}: "
                              f"{sorted(per_layer)}")
    return [per_layer[i] for i in range(len(per_layer))]


# ---------------------------------------------------------------------------------------------------- timm
_TIMM_TOP = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
             "norm.bias", "fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias", "pre_logits.fc.weight",
             "pre_logits.fc.bias"}
_TIMM_FEATURES = [  # (pattern in the key, what it is): named in the error for keys we cannot map
    (r"\.ls[12]\.", "layer scale (ls1/ls2)"), (r"\.(q_norm|k_norm)\.", "q/k normalisation"),
    (r"^reg_token", "register tokens"), (r"^dist_token|^head_dist", "a distillation token (DeiT)"),
    (r"^norm_pre\.", "a pre-encoder norm (norm_pre, CLIP)"), (r"^attn_pool\.", "an attention-pooling head"),
    (r"\.attn\.(q_bias|v_bias)", "BEiT-style q/v biases"), (r"^patch_embed\.norm", "a patch-embedding norm"),
    (r"^patch_embed\.backbone", "a ResNet-hybrid stem"), (r"\.(attn|mlp)\.norm\.", "an inner norm"),
    (r"\.mlp\.fc1_[gx]|\.mlp\.w12", "a gated (SwiGLU) MLP"), (r"relative_position", "relative positions"),
]


def _vit_from_timm(state: Mapping[str, Any], source: str) -> ViTWeights:
    state = _unwrap_timm(state, source)
    if "pos_embed" not in state or "patch_embed.proj.weight" not in state:
        hint = ""
        if any(k.startswith("tokenizers.") for k in state):
            hint = " It is an MBT state dict: load it with MBT.from_pretrained."
        elif "v.pos_embed" in state:
            hint = (" It is an AST (Audio Spectrogram Transformer) checkpoint: it initialises the spectrogram "
                    "stream (init.spectrogram, or mbt.weights.init_streams).")
        elif any(k.startswith(("vit.", "embeddings.")) for k in state):
            hint = " It looks like a Hugging Face transformers ViT; use its timm or original .npz release."
        raise CheckpointError(f"{source}: not a timm ViT state dict: no 'pos_embed' and 'patch_embed.proj.weight' "
                              f"(keys: {sorted(state)[:6]}).{hint}")
    for key in state:
        if key in _TIMM_TOP or re.match(r"^blocks\.\d+\.(" + "|".join(re.escape(k) for k in BLOCK_KEYS) + ")$", key):
            continue
        why = next((w for pattern, w in _TIMM_FEATURES if re.search(pattern, key)), "an unrecognised tensor")
        raise CheckpointError(f"{source}: unsupported ViT feature: key {key!r} ({why}); only the plain pre-LN ViT "
                              "(class token or pooled head, learned position embedding) can initialise MBT")
    t = {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}
    blocks = timm_blocks(t, source)

    notes: list[str] = []
    if "fc_norm.weight" in t:
        if "norm.weight" in t:
            raise CheckpointError(f"{source}: has both 'norm' and 'fc_norm'; a ViT has one of them")
        # timm's fc_norm normalises the pooled feature; MBT (like Flax/big_vision) normalises the tokens and then
        # pools. The closest place for it is the encoder norm, but the ViT's pooled output is not reproduced.
        notes.append("timm fc_norm (a norm after pooling) used as MBT's encoder_norm (a norm before pooling): "
                     "not numerically the same ViT")
        norm = "fc_norm"
    elif "norm.weight" in t:
        norm = "norm"
    else:
        raise CheckpointError(f"{source}: missing 'norm.weight' (the final LayerNorm)")

    cls = t.get("cls_token")
    posemb_cls, posemb_grid, pos_notes = _split_posemb(t["pos_embed"], cls, source, "pos_embed")

    def need(key: str) -> Tensor:
        if key not in t:
            raise CheckpointError(f"{source}: missing {key!r}; the state dict is incomplete")
        return t[key]

    def linear(name: str) -> dict[str, Tensor] | None:
        return {"weight": t[f"{name}.weight"], "bias": need(f"{name}.bias")} if f"{name}.weight" in t else None

    vit = ViTWeights(
        blocks=blocks, encoder_norm={"weight": t[f"{norm}.weight"], "bias": need(f"{norm}.bias")},
        patch_weight=t["patch_embed.proj.weight"], patch_bias=need("patch_embed.proj.bias"),
        cls=cls, posemb_cls=posemb_cls, posemb_grid=posemb_grid,
        pre_logits=linear("pre_logits.fc"), head=linear("head"),
        source=source, format="timm", num_heads=None, notes=notes + pos_notes)
    _check_consistent(vit)
    return vit


def timm_blocks(t: Mapping[str, Tensor], source: str) -> list[dict[str, Tensor]]:
    """The encoder blocks of a timm-style state dict ('blocks.<i>.norm1.weight', ...), each keyed as an mbt
    EncoderBlock (`BLOCK_KEYS`); a block without a qkv bias gets zeros (what it computes)."""
    depth = 1 + max((int(k.split(".")[1]) for k in t if re.match(r"^blocks\.\d+\.", k)), default=-1)
    blocks = []
    for i in range(depth):
        block = {}
        for k in BLOCK_KEYS:
            key = f"blocks.{i}.{k}"
            if key in t:
                block[k] = t[key]
            elif k == "attn.qkv.bias" and f"blocks.{i}.attn.qkv.weight" in t:  # qkv_bias=False: the same as zeros
                block[k] = torch.zeros(t[f"blocks.{i}.attn.qkv.weight"].shape[0])
            else:
                raise CheckpointError(f"{source}: missing {key!r}; the state dict is incomplete")
        blocks.append(block)
    if not blocks:
        raise CheckpointError(f"{source}: no encoder blocks ('blocks.<i>....'); not a ViT")
    return blocks


def _unwrap_timm(state: Mapping[str, Any], source: str) -> dict[str, Tensor]:
    """The tensors of a state dict saved bare, as {'state_dict': ...} / {'model': ...}, or with a 'module.'
    (DataParallel / DDP) prefix."""
    for _ in range(2):
        if "pos_embed" in state:
            break
        inner = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries {bad[:4]} are not tensors; give a ViT state dict")
    return dict(state)


# ---------------------------------------------------------------------------------------------------- checks
def _split_posemb(pos: Tensor, cls: Tensor | None, source: str, key: str
                  ) -> tuple[Tensor | None, Tensor, list[str]]:
    """(1, L, D) position embedding -> (class position (1, 1, D) or None, grid (g, g, D), notes).

    L = g*g + 1 when the class token has a position, L = g*g when it has none (timm no_embed_class, big_vision:
    the class token is concatenated after the positions are added, i.e. its position is zero)."""
    if pos.ndim != 3 or pos.shape[0] != 1:
        raise CheckpointError(f"{source}: {key} has shape {tuple(pos.shape)}; expected (1, tokens, D)")
    length, notes = pos.shape[1], []
    g_with, g_without = math.isqrt(max(length - 1, 0)), math.isqrt(length)
    if cls is not None and length > 1 and g_with * g_with == length - 1:
        posemb_cls, grid = pos[:, :1], pos[0, 1:]
    elif g_without * g_without == length:
        grid = pos[0]
        posemb_cls = None
        if cls is not None:  # a class token without a position: adding zeros is what this ViT computes
            posemb_cls = torch.zeros_like(pos[:, :1])
            notes.append(f"{key} has no class-token position (the ViT adds none): zeros used")
    else:
        raise CheckpointError(f"{source}: {key} has {length} tokens, which is not a square patch grid "
                              f"{'plus one class position ' if cls is not None else ''}(non-square ViT grids and "
                              "extra tokens are not supported)")
    g = math.isqrt(grid.shape[0])
    return posemb_cls, grid.reshape(g, g, -1).contiguous(), notes


def _check_consistent(vit: ViTWeights) -> None:
    """Every tensor's shape agrees with the width D, the MLP width and the head sizes, else CheckpointError."""
    d, mlp = vit.hidden_size, vit.mlp_dim
    want = {"norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,),
            "attn.proj.weight": (d, d), "attn.proj.bias": (d,), "norm2.weight": (d,), "norm2.bias": (d,),
            "mlp.fc1.weight": (mlp, d), "mlp.fc1.bias": (mlp,), "mlp.fc2.weight": (d, mlp), "mlp.fc2.bias": (d,)}
    problems = [f"block {i} {k}: {tuple(b[k].shape)} (expected {want[k]})"
                for i, b in enumerate(vit.blocks) for k in BLOCK_KEYS if tuple(b[k].shape) != want[k]]
    checks = [("encoder_norm.bias", vit.encoder_norm["bias"], (d,)),
              ("patch embedding weight", vit.patch_weight, (d, *vit.patch_weight.shape[1:])),
              ("patch embedding bias", vit.patch_bias, (d,)),
              ("position embedding", vit.posemb_grid, (*vit.grid_size, d))]
    if vit.patch_weight.ndim != 4:
        problems.append(f"patch embedding weight: {tuple(vit.patch_weight.shape)} (expected (D, C, ph, pw))")
    for name in ("cls", "posemb_cls"):
        if getattr(vit, name) is not None:
            checks.append((name, getattr(vit, name), (1, 1, d)))
    width = d
    if vit.pre_logits is not None:
        width = vit.pre_logits["weight"].shape[0]
        checks += [("pre_logits weight", vit.pre_logits["weight"], (width, d)),
                   ("pre_logits bias", vit.pre_logits["bias"], (width,))]
    if vit.head is not None:
        c = vit.head["weight"].shape[0]
        checks += [("head weight", vit.head["weight"], (c, width)), ("head bias", vit.head["bias"], (c,))]
    problems += [f"{name}: {tuple(t.shape)} (expected {shape})" for name, t, shape in checks
                 if tuple(t.shape) != tuple(shape)]
    if problems:
        raise CheckpointError(f"{vit.source}: inconsistent ViT shapes (width D={d}, MLP {mlp}): "
                              + "; ".join(problems[:5]))


# ---------------------------------------------------------------------------------------------------- init
@dataclass
class ViTInitReport:
    """What `init_from_vit` did.

    loaded: model state-dict keys written from the ViT. untouched: model keys left as initialised. dropped: ViT
    parts not used -> why. notes: resizing and other facts worth knowing.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    untouched: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"initialised from ViT {self.source}: {len(self.loaded)} tensors loaded, "
                 f"{len(self.untouched)} left as initialised"]
        if self.untouched:
            lines.append("  left as initialised: " + ", ".join(self.untouched))
        lines += [f"  not used: {part} ({why})" for part, why in self.dropped.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def resize_grid(grid: Tensor, size: tuple[int, int]) -> Tensor:
    """(gh, gw, D) -> (size[0], size[1], D), bilinear with the corner samples aligned.

    This is `scipy.ndimage.zoom(grid, (h/gh, w/gw, 1), order=1)` (grid_mode=False), which Scenic uses: output
    index i samples input position i * (in - 1) / (out - 1), i.e. F.interpolate(align_corners=True). Computed in
    float64 as scipy does. The identity when the size is unchanged."""
    if tuple(grid.shape[:2]) == tuple(size):
        return grid.clone()
    x = grid.permute(2, 0, 1)[None].to(torch.float64)  # (1, D, gh, gw)
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
    return x[0].permute(1, 2, 0).to(grid.dtype).contiguous()


def spectrogram_kernel(weight: Tensor, channels: int) -> Tensor:
    """A spectrogram patch kernel (D, C, time, mel) for a model with `channels` input channels, computing the same
    embedding of a 1-channel spectrogram copied to every channel (as Scenic's pipeline copies it to 3): C -> 1 sums
    the kernel over its channels, 1 -> C spreads it evenly."""
    if weight.shape[1] == channels:
        return weight
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if weight.shape[1] == 1:
        return weight.expand(-1, channels, -1, -1) / channels
    raise CheckpointError(f"a {weight.shape[1]}-channel spectrogram kernel cannot become a {channels}-channel one")


def channel_note(source: int, model: int) -> str:
    """Why a spectrogram kernel whose channel count changed learns at another speed than in its source."""
    if model == 1:
        return (f"spectrogram patch kernel summed over its {source} channels into the model's 1: the same embedding "
                f"of the copied log-mel channel, but that kernel now learns {source}x slower than in Scenic, which "
                f"feeds {source} identical channels (each channel gets the whole gradient); build the model with "
                f"spectrogram_channels={source} to train as Scenic does")
    return (f"spectrogram patch kernel spread evenly over the model's {model} channels (the input is copied to "
            f"each): the same embedding, but it learns {model}x faster than in its 1-channel source; "
            "spectrogram_channels=1 keeps the source's training")


def inflate_kernel(weight: Tensor, t: int, method: str) -> Tensor:
    """2-D patch kernel (D, C, ph, pw) -> 3-D tubelet kernel (D, C, t, ph, pw) (Scenic's `init_embedding`).

    central_frame: zeros except temporal index t // 2, which gets the 2-D kernel (a static video then embeds as the
      ViT embeds one frame, and the other frames of each tubelet start ignored);
    average: the kernel repeated over t and divided by t ("filter inflation", I3D);
    average_arp: repeated and weighted by the approximate-rank-pooling coefficients (Bilen et al.).
    """
    method = _KERNEL_INIT_ALIASES.get(method, method)
    w = weight.unsqueeze(2)  # (D, C, 1, ph, pw)
    if method == "central_frame":
        out = torch.zeros(weight.shape[0], weight.shape[1], t, *weight.shape[2:], dtype=weight.dtype)
        out[:, :, t // 2] = weight
        return out
    if method == "average":
        return w.repeat(1, 1, t, 1, 1) / t
    if method == "average_arp":
        k = torch.arange(1, t + 1, dtype=torch.float64)
        harmonic = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(1.0 / k, 0)])  # H_0 .. H_t
        coeff = (2 * (t - k + 1) - (t + 1) * (harmonic[-1] - harmonic[:-1])) / t  # Bilen et al. eq. 3, over t
        return w.repeat(1, 1, t, 1, 1) * coeff.to(weight.dtype).view(1, 1, t, 1, 1)
    raise CheckpointError(f"unknown kernel_init {method!r}; allowed: {KERNEL_INITS}")


class _Plan:
    """The tensors to write into the model, collected and checked before anything is written."""

    def __init__(self, model: MBT, vit: ViTWeights) -> None:
        self.shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        self.vit = vit
        self.writes: dict[str, Tensor] = {}
        self.report = ViTInitReport(source=vit.source, notes=list(vit.notes))

    def fail(self, message: str) -> None:
        raise CheckpointError(f"{self.vit.source}: {message}")

    def put(self, key: str, value: Tensor) -> None:
        if tuple(value.shape) != self.shapes[key]:  # a bug here, not a user error: every rule sizes its output
            raise AssertionError(f"{key}: computed {tuple(value.shape)}, model has {self.shapes[key]}")
        self.writes[key] = value


def init_from_vit(model: MBT, checkpoint: str | Path | ViTWeights, *, kernel_init: str = "central_frame",
                  init_bottleneck: bool = True, restore_output_proj: bool = False,
                  restore_spectrogram_cls: bool | None = None) -> ViTInitReport:
    """Initialise `model` in place from a ViT classifier, with Scenic's rules (reference C); all exact.

    Args:
      model: the MBT to initialise.
      checkpoint: a ViT file (see `read_vit_checkpoint`) or a `ViTWeights`.
      kernel_init: how the 2-D patch kernel becomes the rgb tubelet kernel ('3d_conv'): 'central_frame' (Scenic's
        released configs), 'average' (filter inflation) or 'average_arp'.
      init_bottleneck: overwrite the bottleneck tokens with [class position ; the ViT position grid resized to
        floor(sqrt(n)) x n // floor(sqrt(n))], as Scenic does. False leaves them as initialised.
      restore_output_proj: copy the ViT's classifier into `output_projection` (same classes only). Default: the
        head stays zero-initialised, for fine-tuning on a new label set.
      restore_spectrogram_cls: None follows Scenic: the spectrogram CLS is restored only in a spectrogram-only
        model (in two-modality models Scenic looks for 'cls_spectrogram', which does not exist, reference H.6);
        True / False force it.
    Returns: a `ViTInitReport` (what was loaded, left alone and not used; `summary()` for people).
    Raises: CheckpointError naming the file and the mismatch (depth, width, MLP, heads, patch, channels, class
      position, bottleneck count); the model is unchanged then.
    """
    vit = checkpoint if isinstance(checkpoint, ViTWeights) else read_vit_checkpoint(checkpoint)
    plan = plan_vit_init(model, vit, kernel_init=kernel_init, init_bottleneck=init_bottleneck,
                         restore_output_proj=restore_output_proj, restore_spectrogram_cls=restore_spectrogram_cls)
    write_init(model, plan.writes, plan.report)
    return plan.report


def plan_vit_init(model: MBT, vit: ViTWeights, *, kernel_init: str = "central_frame", init_bottleneck: bool = True,
                  restore_output_proj: bool = False, restore_spectrogram_cls: bool | None = None) -> _Plan:
    """What `init_from_vit` writes (`plan.writes`, model key -> tensor) and its report, all checked; nothing is
    written yet."""
    if _KERNEL_INIT_ALIASES.get(kernel_init, kernel_init) not in KERNEL_INITS:
        raise CheckpointError(f"unknown kernel_init {kernel_init!r}; allowed: {KERNEL_INITS}")
    cfg = model.config
    plan = _Plan(model, vit)
    check_architecture(plan, cfg)
    for stream in model.encoders:
        plan_blocks(plan, stream)
    plan.put("encoder_norm.weight", vit.encoder_norm["weight"])
    plan.put("encoder_norm.bias", vit.encoder_norm["bias"])
    for m in cfg.modality_fusion:
        plan_tokenizer(plan, cfg, m, kernel_init, restore_spectrogram_cls)
    plan_bottleneck(plan, cfg, init_bottleneck)
    _plan_head(plan, cfg, restore_output_proj)
    return plan


def write_init(model: MBT, writes: Mapping[str, Tensor], report: ViTInitReport) -> None:
    """Copy `writes` (model key -> tensor, shapes checked when planned) into the model and fill the report's
    `loaded` / `untouched` lists, in the model's key order."""
    with torch.no_grad():
        state = model.state_dict()
        for key, value in writes.items():
            state[key].copy_(value)
    report.loaded = [k for k in state if k in writes]
    report.untouched = [k for k in state if k not in writes]


def check_architecture(plan: _Plan, cfg: MBTConfig) -> None:
    vit = plan.vit
    for what, theirs, ours in (("depth (layers)", vit.num_layers, cfg.num_layers),
                               ("width (hidden size)", vit.hidden_size, cfg.hidden_size),
                               ("MLP width", vit.mlp_dim, cfg.mlp_dim)):
        if theirs != ours:
            plan.fail(f"the ViT's {what} is {theirs} but the model's is {ours}; build the MBT with the ViT's "
                      f"architecture ({vit.describe()})")
    if vit.num_heads is None:
        plan.report.notes.append(f"the checkpoint does not store the number of heads; the model's "
                                 f"{cfg.num_heads} is assumed to be the ViT's")
    elif vit.num_heads != cfg.num_heads:
        plan.fail(f"the ViT has {vit.num_heads} heads but the model has {cfg.num_heads}; set num_heads="
                  f"{vit.num_heads}")


def plan_blocks(plan: _Plan, stream: str) -> None:
    """ViT block i into layer i of one stream's encoder (a modality's own, or 'shared')."""
    for i, block in enumerate(plan.vit.blocks):
        for k, v in block.items():
            plan.put(f"encoders.{stream}.{i}.{k}", v)


def _class_position(plan: _Plan, what: str) -> Tensor:
    if plan.vit.posemb_cls is None:
        plan.fail(f"the model's token classifier needs the ViT's class-token position for {what}, but this ViT has "
                  "no class token (a pooled-head ViT); use a token-classifier ViT, or build the MBT with a pooled "
                  "head (classifier='gap')")
    return plan.vit.posemb_cls


def plan_tokenizer(plan: _Plan, cfg: MBTConfig, m: str, kernel_init: str,
                    restore_spectrogram_cls: bool | None) -> None:
    vit, prefix = plan.vit, f"tokenizers.{m}"
    token_head = cfg.classifier == "token"

    # --- position embedding: the ViT grid resized to the model's per-frame grid, tiled over time (t-major, as the
    # tokens are flattened (t, h, w)), the class position in front for the token head.
    if m == "rgb":
        t, ph, pw = cfg.rgb_patch_size
        if cfg.temporal_encoding == "3d_conv":
            frames, (gh, gw) = cfg.token_grid("rgb")[0], cfg.token_grid("rgb")[1:]
        else:  # temporal_sampling: the sampled frames are stacked along the height of one image
            frames = len(cfg.rgb_frame_indices)
            if cfg.image_size[0] % ph:
                plan.fail(f"with temporal_sampling the frame height {cfg.image_size[0]} must be a multiple of the "
                          f"patch height {ph}, so every stacked frame has its own rows of patches to tile the ViT "
                          "grid over")
            gh, gw = cfg.image_size[0] // ph, cfg.image_size[1] // pw
        patch = (ph, pw)
    else:
        frames, (gh, gw) = 1, cfg.token_grid("spectrogram")  # ViT rows -> time, columns -> mel
        patch = tuple(cfg.spectrogram_patch_size)
    grid = resize_grid(vit.posemb_grid, (gh, gw)).reshape(gh * gw, -1).repeat(frames, 1)  # (frames*gh*gw, D)
    if token_head:
        grid = torch.cat([_class_position(plan, f"the {m} position embedding")[0], grid])
    plan.put(f"{prefix}.pos_embedding", grid[None])
    plan.report.notes.append(
        f"{m} position embedding: ViT grid {vit.grid_size[0]}x{vit.grid_size[1]} -> {gh}x{gw}"
        + (f", tiled over {frames} temporal positions" if frames > 1 else "")
        + (" (resized bilinearly)" if (gh, gw) != vit.grid_size else ""))

    # --- patch embedding
    if patch != vit.patch_size:
        plan.fail(f"the ViT's patch is {vit.patch_size[0]}x{vit.patch_size[1]} but the model's {m} patch is "
                  f"{patch[0]}x{patch[1]}; the patch sizes must match (set "
                  f"{'rgb_patch_size (t, h, w)' if m == 'rgb' else 'spectrogram_patch_size (time, mel)'})")
    weight = vit.patch_weight  # (D, C, ph, pw)
    channels = cfg.rgb_channels if m == "rgb" else cfg.spectrogram_channels
    if m == "spectrogram" and channels != vit.in_channels and 1 in (channels, vit.in_channels):
        weight = spectrogram_kernel(weight, channels)
        plan.report.notes.append(channel_note(vit.in_channels, channels))
    elif channels != vit.in_channels:
        plan.fail(f"the ViT takes {vit.in_channels} input channels but the model's {m} input has {channels}; use "
                  f"{vit.in_channels}" + (" or 1" if m == "spectrogram" else ""))
    if m == "rgb" and cfg.temporal_encoding == "3d_conv":
        weight = inflate_kernel(weight, cfg.rgb_patch_size[0], kernel_init)
    plan.put(f"{prefix}.patch_embed.proj.weight", weight)
    plan.put(f"{prefix}.patch_embed.proj.bias", vit.patch_bias)

    # --- CLS token
    if not token_head:
        if vit.cls is not None:
            plan.report.dropped["cls"] = f"the model uses a pooled head ({cfg.classifier!r})"
            plan.report.dropped["class-token position"] = f"the model uses a pooled head ({cfg.classifier!r})"
        return
    restore = True
    if m == "spectrogram":
        scenic_rule = len(cfg.modality_fusion) == 1
        restore = scenic_rule if restore_spectrogram_cls is None else restore_spectrogram_cls
        if not restore:
            plan.report.notes.append(
                "spectrogram cls left as initialised ("
                + ("as Scenic, which in a two-modality model looks for 'cls_spectrogram' while the parameter is "
                   "'clsspectrogram'; restore_spectrogram_cls=True restores it"
                   if restore_spectrogram_cls is None else "restore_spectrogram_cls=False") + ")")
    if restore:
        plan.put(f"{prefix}.cls", vit.cls)


def plan_bottleneck(plan: _Plan, cfg: MBTConfig, init_bottleneck: bool) -> None:
    if not cfg.use_bottleneck:
        return
    if not init_bottleneck:
        plan.report.notes.append("bottleneck left as initialised (init_bottleneck=False)")
        return
    n = cfg.n_bottlenecks
    gh = math.isqrt(n)
    gw = n // gh
    if gh * gw != n:
        works = [k for k in range(1, 33) if k % math.isqrt(k) == 0]
        plan.fail(f"n_bottlenecks={n} cannot be laid out as a floor(sqrt(n)) x n // floor(sqrt(n)) = {gh}x{gw} "
                  f"grid, which Scenic's bottleneck initialisation needs; use a count divisible by floor(sqrt(n)) "
                  f"({', '.join(map(str, works))}, ...) or init_from_vit(..., init_bottleneck=False)")
    tokens = resize_grid(plan.vit.posemb_grid, (gh, gw)).reshape(n, -1)  # (n, D)
    if cfg.classifier == "token":
        tokens = torch.cat([_class_position(plan, "the bottleneck tokens")[0], tokens])
    plan.put("bottleneck", tokens[None])
    plan.report.notes.append(f"bottleneck: ViT grid {plan.vit.grid_size[0]}x{plan.vit.grid_size[1]} -> {gh}x{gw}"
                             + (" after the class position" if cfg.classifier == "token" else ""))


def _plan_head(plan: _Plan, cfg: MBTConfig, restore_output_proj: bool) -> None:
    vit = plan.vit
    if vit.pre_logits is not None:
        if cfg.representation_size is None:
            plan.report.dropped["pre_logits"] = "the model has no pre_logits (representation_size=None)"
        elif cfg.representation_size != vit.pre_logits["weight"].shape[0]:
            plan.fail(f"the ViT's pre_logits has width {vit.pre_logits['weight'].shape[0]} but the model's "
                      f"representation_size is {cfg.representation_size}; set it to the ViT's or to None")
        else:
            plan.put("pre_logits.weight", vit.pre_logits["weight"])
            plan.put("pre_logits.bias", vit.pre_logits["bias"])
    elif cfg.representation_size is not None:
        plan.report.notes.append("the ViT has no pre_logits: the model's pre_logits stays as initialised")

    if vit.head is None:
        if restore_output_proj:
            plan.fail("restore_output_proj=True but the ViT has no classifier head")
        return
    if not restore_output_proj:
        plan.report.dropped["head"] = ("restore_output_proj=False: output_projection stays zero-initialised for "
                                       "fine-tuning")
        return
    want = plan.shapes["output_projection.weight"]
    got = tuple(vit.head["weight"].shape)
    if got != want:
        plan.fail(f"restore_output_proj=True but the ViT head is {got} (classes, features) and the model's "
                  f"output_projection is {want}; use the ViT's num_classes (and representation_size) or "
                  "restore_output_proj=False")
    plan.put("output_projection.weight", vit.head["weight"])
    plan.put("output_projection.bias", vit.head["bias"])


__all__ = ["ViTWeights", "ViTInitReport", "read_vit_checkpoint", "init_from_vit", "resize_grid", "inflate_kernel",
           "convert_pre_linen", "CheckpointError"]
