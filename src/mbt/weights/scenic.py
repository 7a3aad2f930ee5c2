"""Scenic (Flax) MBT parameters and checkpoints -> PyTorch.

* `scenic_to_state_dict(params, config)`: a flat mapping of '/'-joined Flax paths to arrays -> the state dict of
  `MBT(config)`, key by key with explicit transposes and shape checks.
* `read_flax_checkpoint(path)`: a Flax msgpack checkpoint file -> nested dict of numpy arrays, with msgpack and
  numpy only (no jax, no flax).
* `scenic_params_from_checkpoint(tree)`: the parameter tree of both train-state layouts (`params`, and the
  MBT trainer / model-zoo `optimizer/target`).
* `infer_config(params, ...)`: what the parameter tree tells (width, depth, heads, modalities, classifier,
  bottlenecks, patch sizes, representation size, classes); the rest (fusion layer, input sizes) comes from arguments.
* `convert_checkpoint(path, out_dir, ...)`: all of the above, written as a model directory.

Flax layouts (reference B.4): Dense kernel (in, out); conv kernel (*window, C_in, C_out); attention q/k/v kernel
(D, heads, head_dim) and bias (heads, head_dim); attention out kernel (heads, head_dim, D).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import msgpack
import numpy as np
import torch

from ..data.audio import FrontEndConfig
from ..data.config import DataConfig
from ..errors import CheckpointError, ConfigError
from ..models.config import MBTConfig
from ..models.pretrained import mismatch_message

# Scenic's AudioSet log-mel statistics ("calculated over the entire unbalanced train set"; reference D.1, D.5).
SCENIC_SPEC_MEAN, SCENIC_SPEC_STD = 1.102, 2.762

# ---------------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Entry:
    """One torch tensor and the Flax arrays it is made of."""

    torch_key: str
    flax_keys: tuple[str, ...]
    kind: str  # 'copy' | 'dense' | 'conv' | 'qkv_kernel' | 'qkv_bias' | 'out_kernel'


def _flax_block_name(config: MBTConfig, modality_or_stream: str, layer: int) -> str:
    # Scenic names the rgb (and the shared) stream's blocks `encoderblock_{l}`, others `encoderblock_{l}_{m}`.
    if modality_or_stream in ("rgb", "shared"):
        return f"Transformer/encoderblock_{layer}"
    return f"Transformer/encoderblock_{layer}_{modality_or_stream}"


def scenic_layout(config: MBTConfig) -> list[_Entry]:
    """Every tensor of `MBT(config)`'s state dict with the Flax parameter path(s) it comes from."""
    entries: list[_Entry] = []
    add = lambda t, f, kind="copy": entries.append(_Entry(t, tuple(f) if isinstance(f, tuple) else (f,), kind))
    single = len(config.modality_fusion) == 1
    for m in config.modality_fusion:
        tok = f"tokenizers.{m}"
        emb = "embedding" if m == "rgb" else f"embedding_{m}"
        add(f"{tok}.patch_embed.proj.weight", f"{emb}/kernel", "conv")
        add(f"{tok}.patch_embed.proj.bias", f"{emb}/bias")
        if config.classifier == "token":
            # Scenic: `cls` for rgb and for any single-modality model, `cls<modality>` (no underscore) otherwise.
            add(f"{tok}.cls", "cls" if (m == "rgb" or single) else f"cls{m}")
        posemb = "posembed_input" if m == "rgb" else f"posembed_input_{m}"
        add(f"{tok}.pos_embedding", f"Transformer/{posemb}/pos_embedding")
    if config.use_bottleneck:
        add("bottleneck", "bottleneck")
    streams = ("shared",) if config.share_encoder else config.modality_fusion
    for s in streams:
        for layer in range(config.num_layers):
            t, f = f"encoders.{s}.{layer}", _flax_block_name(config, s, layer)
            att = f"{f}/MultiHeadDotProductAttention_0"
            add(f"{t}.norm1.weight", f"{f}/LayerNorm_0/scale")
            add(f"{t}.norm1.bias", f"{f}/LayerNorm_0/bias")
            add(f"{t}.attn.qkv.weight", (f"{att}/query/kernel", f"{att}/key/kernel", f"{att}/value/kernel"),
                "qkv_kernel")
            add(f"{t}.attn.qkv.bias", (f"{att}/query/bias", f"{att}/key/bias", f"{att}/value/bias"), "qkv_bias")
            add(f"{t}.attn.proj.weight", f"{att}/out/kernel", "out_kernel")
            add(f"{t}.attn.proj.bias", f"{att}/out/bias")
            add(f"{t}.norm2.weight", f"{f}/LayerNorm_1/scale")
            add(f"{t}.norm2.bias", f"{f}/LayerNorm_1/bias")
            add(f"{t}.mlp.fc1.weight", f"{f}/MlpBlock_0/Dense_0/kernel", "dense")
            add(f"{t}.mlp.fc1.bias", f"{f}/MlpBlock_0/Dense_0/bias")
            add(f"{t}.mlp.fc2.weight", f"{f}/MlpBlock_0/Dense_1/kernel", "dense")
            add(f"{t}.mlp.fc2.bias", f"{f}/MlpBlock_0/Dense_1/bias")
    add("encoder_norm.weight", "Transformer/encoder_norm/scale")
    add("encoder_norm.bias", "Transformer/encoder_norm/bias")
    if config.representation_size is not None:
        add("pre_logits.weight", "pre_logits/kernel", "dense")
        add("pre_logits.bias", "pre_logits/bias")
    add("output_projection.weight", "output_projection/kernel", "dense")
    add("output_projection.bias", "output_projection/bias")
    return entries


def _flax_shapes(kind: str, torch_shape: Sequence[int], num_heads: int) -> list[tuple[int, ...]]:
    """Shapes of the Flax arrays that make a torch tensor of `torch_shape`."""
    s = tuple(torch_shape)
    if kind == "copy":
        return [s]
    if kind == "dense":  # torch (out, in) <- flax (in, out)
        return [(s[1], s[0])]
    if kind == "conv":  # torch (C_out, C_in, *window) <- flax (*window, C_in, C_out)
        return [(*s[2:], s[1], s[0])]
    d = s[-1] if kind != "qkv_bias" else s[0] // 3
    hd = d // num_heads
    if kind == "qkv_kernel":  # torch (3D, D) <- 3 x flax (D, heads, head_dim)
        return [(d, num_heads, hd)] * 3
    if kind == "qkv_bias":  # torch (3D,) <- 3 x flax (heads, head_dim)
        return [(num_heads, hd)] * 3
    if kind == "out_kernel":  # torch (D, D) <- flax (heads, head_dim, D)
        return [(num_heads, hd, d)]
    raise AssertionError(kind)


def _to_torch(kind: str, arrays: list[np.ndarray]) -> np.ndarray:
    a = arrays[0]
    if kind == "copy":
        return a
    if kind == "dense":
        return a.T
    if kind == "conv":
        return np.moveaxis(a, (-1, -2), (0, 1))  # (*window, C_in, C_out) -> (C_out, C_in, *window)
    if kind == "qkv_kernel":  # each (D, H, hd) -> (D, D) -> transposed to torch (out, in); rows q | k | v
        return np.concatenate([k.reshape(k.shape[0], -1).T for k in arrays], axis=0)
    if kind == "qkv_bias":
        return np.concatenate([b.reshape(-1) for b in arrays], axis=0)
    if kind == "out_kernel":  # (H, hd, D) -> (D_in = H * hd, D) -> transposed
        return a.reshape(-1, a.shape[-1]).T
    raise AssertionError(kind)


def _to_flax(kind: str, tensor: np.ndarray, num_heads: int) -> list[np.ndarray]:
    """Inverse of `_to_torch`."""
    shapes = _flax_shapes(kind, tensor.shape, num_heads)
    if kind == "copy":
        return [tensor]
    if kind == "dense":
        return [tensor.T]
    if kind == "conv":
        return [np.moveaxis(tensor, (0, 1), (-1, -2))]
    if kind == "qkv_kernel":
        return [w.T.reshape(shape) for w, shape in zip(np.split(tensor, 3, axis=0), shapes)]
    if kind == "qkv_bias":
        return [b.reshape(shape) for b, shape in zip(np.split(tensor, 3), shapes)]
    if kind == "out_kernel":
        return [tensor.T.reshape(shapes[0])]
    raise AssertionError(kind)


def _expected_state_shapes(config: MBTConfig) -> dict[str, tuple[int, ...]]:
    from ..models.mbt import MBT

    with torch.device("meta"):
        model = MBT(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a/b/c': leaf}."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(flatten_params(v, key + "/"))
        else:
            flat[key] = v
    return flat


def _strip_params_prefix(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k[len("params/"):] if k.startswith("params/") else k: v for k, v in params.items()}


def scenic_to_state_dict(params: Mapping[str, Any], config: MBTConfig) -> dict[str, torch.Tensor]:
    """Convert Scenic MBT parameters to the state dict of `MBT(config)`.

    Args:
      params: flat mapping of '/'-joined Flax paths to arrays (numpy, jax or torch), e.g.
        'Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel'; a leading 'params/' is optional. A nested dict is
        flattened first.
      config: the architecture the parameters belong to.
    Returns: {torch key: tensor}, dtypes as given.
    Raises: CheckpointError naming every missing, unexpected or wrongly shaped parameter.
    """
    flat = _strip_params_prefix(flatten_params(params) if any(isinstance(v, Mapping) for v in params.values())
                                else dict(params))
    expected = _expected_state_shapes(config)
    layout = scenic_layout(config)
    assert {e.torch_key for e in layout} == set(expected), "scenic_layout out of sync with MBT"
    used: set[str] = set()
    missing, wrong, state = [], [], {}
    for e in layout:
        want = _flax_shapes(e.kind, expected[e.torch_key], config.num_heads)
        arrays = []
        for fk, shape in zip(e.flax_keys, want):
            if fk not in flat:
                missing.append(fk)
                continue
            used.add(fk)
            a = np.asarray(flat[fk].detach().cpu() if isinstance(flat[fk], torch.Tensor) else flat[fk])
            if tuple(a.shape) != shape:
                wrong.append(f"{fk}: {tuple(a.shape)}, expected {shape}")
            arrays.append(a)
        if len(arrays) == len(e.flax_keys) and not wrong:
            state[e.torch_key] = torch.tensor(np.ascontiguousarray(_to_torch(e.kind, arrays)))  # a writable copy
    problems = mismatch_message(missing, sorted(set(flat) - used), wrong, noun="parameter")
    if problems:
        raise CheckpointError("Scenic parameters do not fit the MBT config: " + problems)
    return state


def state_dict_to_scenic(state_dict: Mapping[str, torch.Tensor], config: MBTConfig) -> dict[str, np.ndarray]:
    """The inverse of `scenic_to_state_dict`: a flat {'/'-joined Flax path: numpy array} (no 'params/' prefix)."""
    out: dict[str, np.ndarray] = {}
    for e in scenic_layout(config):
        t = state_dict[e.torch_key].detach().cpu().numpy()
        for fk, a in zip(e.flax_keys, _to_flax(e.kind, t, config.num_heads)):
            out[fk] = np.ascontiguousarray(a)
    return out


# ---------------------------------------------------------------------------------------------------- msgpack


def _array_from_ext(data: bytes) -> np.ndarray:
    # Flax `_ndarray_to_bytes`: msgpack of [shape, dtype name, C-order bytes].
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    name = dtype_name.decode() if isinstance(dtype_name, bytes) else str(dtype_name)
    if name == "bfloat16":  # not a numpy dtype: widen to float32 exactly
        bits = np.frombuffer(buffer, dtype=np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(buffer, dtype=np.dtype(name)).reshape(shape)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == 1:  # ndarray
        return _array_from_ext(data)
    if code == 2:  # native complex: [real, imag]
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    if code == 3:  # numpy scalar
        return _array_from_ext(data)[()]
    return msgpack.ExtType(code, data)


def _unchunk(tree: Any) -> Any:
    """Flax splits arrays over 2**30 bytes into {'__msgpack_chunked_array__', 'shape', 'chunks'} maps."""
    if isinstance(tree, dict):
        if "__msgpack_chunked_array__" in tree:
            shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
            chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
            return np.concatenate(chunks).reshape(shape)
        return {k: _unchunk(v) for k, v in tree.items()}
    return tree


def read_flax_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Flax msgpack checkpoint file (as written by `flax.training.checkpoints`) into nested dicts of numpy
    arrays. Raises CheckpointError with a one-line reason for a missing, empty, truncated or non-msgpack file."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("checkpoint_*"), key=lambda p: _step_of(p.name))
        if not candidates:
            raise CheckpointError(f"{path}: a folder without a checkpoint_<step> file")
        path = candidates[-1]
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory, not a msgpack checkpoint file (Orbax/tensorstore checkpoints "
                              "are not supported: restore it with flax and save it with flax.training.checkpoints)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"{path}: empty file, not a Flax checkpoint")
    try:
        tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises ValueError subclasses, and others, for malformed or cut data
        reason = "the file is truncated" if "incomplete" in str(e) else f"{type(e).__name__}: {e}"
        raise CheckpointError(f"{path}: not a readable Flax msgpack checkpoint ({reason})") from None
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: not a Flax checkpoint (msgpack holds a {type(tree).__name__}, "
                              "expected a map of train-state fields)")
    return _unchunk(tree)


def _step_of(name: str) -> int:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else -1


def scenic_params_from_checkpoint(tree: Mapping[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """The flat parameter dict of a Scenic train state: `params` (current `train_lib`), else `optimizer/target`
    (MBT trainer and model-zoo files, flax.optim)."""
    if isinstance(tree.get("params"), Mapping):
        params = tree["params"]
    elif isinstance(tree.get("optimizer"), Mapping) and isinstance(tree["optimizer"].get("target"), Mapping):
        params = tree["optimizer"]["target"]
    else:
        raise CheckpointError(f"{source}: not a Scenic train state: found neither 'params' nor 'optimizer/target' "
                              f"(top-level keys: {sorted(tree)[:12]})")
    if set(params) == {"params"} and isinstance(params["params"], Mapping):  # a nested Linen variables dict
        params = params["params"]
    return flatten_params(params)


# ---------------------------------------------------------------------------------------------------- inference

_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)(?:_(\w+?))?/")


def infer_config(params: Mapping[str, Any], *, source: str = "checkpoint", fusion_layer: int | None = None,
                 test_with_bottlenecks: bool = True, modality_fusion: Sequence[str] | None = None,
                 classifier: str | None = None, num_frames: int = 32, image_size: Sequence[int] = (224, 224),
                 spectrogram_shape: Sequence[int] = (800, 128), n_sampled_frames: int | None = None,
                 dropout_rate: float = 0.0, attention_dropout_rate: float = 0.0,
                 stochastic_droplayer_rate: float = 0.0) -> MBTConfig:
    """An MBTConfig from a flat Scenic parameter dict, with what the tree cannot tell taken from the arguments.

    From the tree: modalities, hidden size, depth, heads, MLP width, token vs pooled head, bottleneck count,
    share_encoder, patch sizes, input channels, temporal encoding, representation size, number of classes.
    From the arguments (defaults: the released MBT-B/16x2 AudioSet models): fusion_layer (None: 8 for two
    modalities, 0 for one, where it has no effect), test_with_bottlenecks,
    modality order, the pooling of a head without CLS (gap/gmp/gsp look alike), the input sizes (checked against
    the position-embedding lengths), n_sampled_frames (temporal_sampling), and the training-only rates.
    """
    p = _strip_params_prefix(params)

    def need(key: str) -> np.ndarray:
        if key not in p:
            raise CheckpointError(f"{source}: not an MBT checkpoint: no parameter {key!r} "
                                  f"(top-level names: {sorted({k.split('/')[0] for k in p})})")
        return np.asarray(p[key])

    present = [m for m, key in (("spectrogram", "embedding_spectrogram/kernel"), ("rgb", "embedding/kernel"))
               if key in p]
    if not present:
        need("embedding/kernel")  # raises with the names found
    if "head/kernel" in p and "output_projection/kernel" not in p:
        raise CheckpointError(f"{source}: this is a ViT classifier checkpoint ('head'), not MBT; a ViT "
                              "initialises an MBT for training, it does not convert to one")
    need("Transformer/encoder_norm/scale")
    n_classes_kernel = need("output_projection/kernel")
    if modality_fusion is None:
        modality_fusion = [m for m in ("spectrogram", "rgb") if m in present]
    else:
        modality_fusion = list(modality_fusion)
        if sorted(modality_fusion) != sorted(present):
            raise CheckpointError(f"{source}: --modality-fusion {modality_fusion} does not match the modalities "
                                  f"whose parameters the checkpoint holds: {present}")
    hidden = need("Transformer/encoder_norm/scale").shape[0]
    blocks: dict[int, set[str]] = {}
    for k in p:
        m = _BLOCK.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(m.group(2) or "rgb")
    if not blocks:
        raise CheckpointError(f"{source}: not an MBT checkpoint: no Transformer/encoderblock_* parameters")
    num_layers = max(blocks) + 1
    if sorted(blocks) != list(range(num_layers)):
        raise CheckpointError(f"{source}: encoder blocks are not numbered 0..{num_layers - 1}: {sorted(blocks)}")
    share_encoder = "spectrogram" in present and not any("spectrogram" in s for s in blocks.values())
    first = "Transformer/encoderblock_0" + ("" if (share_encoder or "rgb" in blocks[0]) else "_spectrogram")
    q = need(f"{first}/MultiHeadDotProductAttention_0/query/kernel")
    num_heads = q.shape[1]
    mlp_dim = need(f"{first}/MlpBlock_0/Dense_0/kernel").shape[1]
    has_cls = "cls" in p
    if classifier is None:
        classifier = "token" if has_cls else "gap"
    elif (classifier == "token") != has_cls:
        raise CheckpointError(f"{source}: --classifier {classifier} does not match the checkpoint, which "
                              f"{'has' if has_cls else 'has no'} CLS token ('cls')")
    use_bottleneck = "bottleneck" in p
    n_bottlenecks = 4
    if use_bottleneck:
        n_bottlenecks = need("bottleneck").shape[1] - (1 if classifier == "token" else 0)
    representation_size = need("pre_logits/kernel").shape[1] if "pre_logits/kernel" in p else None
    if fusion_layer is None:
        fusion_layer = 8 if len(modality_fusion) > 1 else 0
        if fusion_layer > num_layers:
            raise CheckpointError(f"{source}: the model has {num_layers} layers, so the released models' fusion "
                                  "layer 8 cannot apply; give the layer it was trained with (--fusion-layer)")
    elif not 0 <= fusion_layer <= num_layers:
        raise CheckpointError(f"{source}: --fusion-layer {fusion_layer} is outside 0..{num_layers} "
                              f"(the model has {num_layers} layers)")

    kwargs: dict[str, Any] = {}
    if "rgb" in present:
        k = need("embedding/kernel")
        if k.ndim == 5:  # (t, h, w, C, D)
            kwargs.update(temporal_encoding="3d_conv", rgb_patch_size=tuple(k.shape[:3]), rgb_channels=k.shape[3])
        elif k.ndim == 4:  # (h, w, C, D): temporal_sampling with a 2-D patch
            if n_sampled_frames is None:
                raise CheckpointError(f"{source}: the rgb embedding is 2-D (temporal_sampling); give the number of "
                                      "sampled frames with --n-sampled-frames")
            kwargs.update(temporal_encoding="temporal_sampling", rgb_patch_size=(1, *k.shape[:2]),
                          rgb_channels=k.shape[2], n_sampled_frames=n_sampled_frames)
        else:
            raise CheckpointError(f"{source}: embedding/kernel has shape {k.shape}; expected 5-D (3d_conv) or 4-D")
        kwargs.update(num_frames=num_frames, image_size=tuple(image_size))
    if "spectrogram" in present:
        k = need("embedding_spectrogram/kernel")
        kwargs.update(spectrogram_patch_size=tuple(k.shape[:2]), spectrogram_channels=k.shape[2],
                      spectrogram_shape=tuple(spectrogram_shape))
    try:
        config = MBTConfig(
            modality_fusion=tuple(modality_fusion), fusion_layer=fusion_layer, use_bottleneck=use_bottleneck,
            n_bottlenecks=n_bottlenecks, test_with_bottlenecks=test_with_bottlenecks, share_encoder=share_encoder,
            hidden_size=hidden, num_layers=num_layers, num_heads=num_heads, mlp_dim=mlp_dim,
            classifier=classifier, representation_size=representation_size,
            num_classes=n_classes_kernel.shape[1], dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate, stochastic_droplayer_rate=stochastic_droplayer_rate,
            **kwargs)
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None
    # The input sizes are not in the tree, but the position embeddings fix the token counts: check them.
    flags = {"rgb": "--num-frames/--image-size", "spectrogram": "--spectrogram-shape"}
    for m in modality_fusion:
        name = "posembed_input" if m == "rgb" else f"posembed_input_{m}"
        n = need(f"Transformer/{name}/pos_embedding").shape[1]
        if n != config.num_tokens(m):
            given = (f"{config.num_frames} frames of {config.image_size}" if m == "rgb"
                     else f"spectrogram {config.spectrogram_shape}")
            raise CheckpointError(
                f"{source}: the {m} position embedding has {n} tokens, but {given} with patches "
                f"{config.rgb_patch_size if m == 'rgb' else config.spectrogram_patch_size} gives "
                f"{config.num_tokens(m)}; pass the input size the model was trained with ({flags[m]})")
    return config


def scenic_data_config(config: MBTConfig) -> DataConfig:
    """The data config a converted Scenic model expects, as far as it is known: the official AudioSet pipeline
    (frames counted at 25 fps, stride 2, shorter side resized to 256 for the 224 crop, i.e. 8/7 of the crop for
    other image sizes, central crop; 4 test clips) and a log-mel
    spectrogram of 100 frames per second standardised with Scenic's AudioSet statistics (mean 1.102, std 2.762).

    The front end is mbt's `logmel` (16 kHz, 25 ms Hamming window, 10 ms hop, mel bins from 125 to 7500 Hz). Google's
    own extractor is not public (reference H.17): its sample rate, window and log are unknown, so a converted model
    sees features close to, but not exactly, those it was trained on. Measure your data's statistics with
    `mbt stats ... --write-config` to replace these."""
    front_end = FrontEndConfig.preset("logmel", num_mel_bins=config.spectrogram_shape[1], mean=SCENIC_SPEC_MEAN,
                                      std=SCENIC_SPEC_STD)
    min_resize = round(max(config.image_size) * 256 / 224)  # Scenic: 256 for 224
    return DataConfig.for_model(config, front_end=front_end, fps=25.0, stride=2, min_resize=min_resize,
                                num_test_clips=4)


def convert_checkpoint(checkpoint: str | Path, out_dir: str | Path, **config_args: Any) -> MBTConfig:
    """Read a Scenic MBT checkpoint, infer its config (`infer_config`, with `config_args`), convert the params and
    write a model directory that `MBT.from_pretrained` and `mbt.data.load_pretrained` read: config.json,
    model.safetensors and preprocessor_config.json (`scenic_data_config`: the official pipeline's sampling and
    statistics with mbt's log-mel front end). Returns the config.
    """
    from ..models.mbt import MBT

    tree = read_flax_checkpoint(checkpoint)
    params = scenic_params_from_checkpoint(tree, source=str(checkpoint))
    config = infer_config(params, source=str(checkpoint), **config_args)
    state = scenic_to_state_dict(params, config)
    state = {k: v.float() for k, v in state.items()}
    model = MBT(config)
    model.load_state_dict(state)
    model.save_pretrained(out_dir, data_config=scenic_data_config(config))
    return config


__all__ = ["scenic_to_state_dict", "state_dict_to_scenic", "scenic_layout", "read_flax_checkpoint",
           "scenic_params_from_checkpoint", "infer_config", "convert_checkpoint", "scenic_data_config", "flatten_params",
           "CheckpointError"]
