"""Start each stream of an MBT from its own pretrained encoder.

The paper starts both streams from one ImageNet ViT (`init_from_vit`). People also combine encoders pretrained on
each modality: an image ViT for the frames and an audio transformer (AST) for the spectrogram, or the two
single-modality models of a previous run (`mbt demo` trains `video` and `audio`). `init_streams` takes one source
per modality, each one of

* an ImageNet ViT file (every format `read_vit_checkpoint` reads): Scenic's rules for that stream (reference C);
* an AST checkpoint (spectrogram stream only, `mbt.weights.ast`): the kernel carries over, its (freq, time) grid of
  overlapping patches is resampled to the model's (time, mel) grid;
* an mbt model directory that has the modality (`mbt train`'s `model/`, `mbt convert`'s output): that stream's
  tokenizer (patch embedding, class token, position embedding) and encoder blocks, copied unchanged.

and optionally `checkpoint`, one ViT for every stream first (what `init.checkpoint` does alone); the per-stream
sources then replace their streams. The final LayerNorm is shared by the streams, so it comes from `checkpoint`,
else from one stream's source (`encoder_norm_from`, default the first modality of `modality_fusion` that has one).
The classifier head is new. Everything is planned and checked before the model is touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from torch import Tensor

from ..errors import CheckpointError, ConfigError
from ..models.config import MBTConfig, MODALITIES
from ..models.pretrained import CONFIG_NAME, PREPROCESSOR_NAME, read_model_dir
from .ast import ast_from_state, is_ast_state
from .vit import (ViTInitReport, ViTWeights, _Plan, channel_note, check_architecture, load_weights_file,
                  plan_blocks, plan_bottleneck, plan_tokenizer, plan_vit_init, read_vit_checkpoint, spectrogram_kernel,
                  vit_from_raw, write_init)

if TYPE_CHECKING:
    from ..data.config import DataConfig
    from ..models.mbt import MBT

_ARCHITECTURE = ("hidden_size", "num_layers", "num_heads", "mlp_dim")
# The data fields that decide what a stream's encoder sees, per modality (compared by `input_differences`).
_INPUT_FIELDS = {"rgb": ("fps", "stride", "num_frames", "min_resize", "crop_size"),
                 "spectrogram": ("front_end", "spec_frames")}


@dataclass(eq=False)
class MBTEncoder:
    """One or more streams of an mbt model directory: its config, state dict and (if saved) data config."""

    config: MBTConfig
    state: dict[str, Tensor]
    source: str
    data_config: dict[str, Any] | None = None
    """preprocessor_config.json as a dict: the inputs the streams were trained on."""

    def describe(self) -> str:
        c = self.config
        fused = "" if len(c.modality_fusion) == 1 else f", {c.describe_fusion()}"
        return (f"mbt model directory: {'+'.join(c.modality_fusion)}, D={c.hidden_size}, {c.num_layers} layers"
                f"{fused}")


Source = ViTWeights | MBTEncoder


def read_encoder(path: str | Path, modality: str, freq_patches: int | None = None) -> Source:
    """The pretrained encoder at `path` for one modality: an mbt model directory (a folder with config.json), an
    AST checkpoint (spectrogram only) or an ImageNet ViT file; detected from the files, not their names."""
    if modality not in MODALITIES:
        raise ConfigError(f"unknown modality {modality!r}; allowed: {MODALITIES}")
    path = Path(path)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        config, state = read_model_dir(path)
        if modality not in config.modality_fusion:
            raise CheckpointError(f"{path}: an mbt model of {list(config.modality_fusion)}, without a {modality} "
                                  "stream to initialise the model's from")
        data = None
        if (path / PREPROCESSOR_NAME).is_file():
            try:
                data = json.loads((path / PREPROCESSOR_NAME).read_text())
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{path / PREPROCESSOR_NAME}: not readable JSON ({e})") from None
        return MBTEncoder(config=config, state=state, source=str(path), data_config=data)
    if path.is_dir():  # a Hugging Face-style folder of ViT weights
        return read_vit_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or model directory; give an mbt model directory, an ImageNet "
                              "ViT checkpoint or (for the spectrogram) an AST checkpoint")
    kind, raw = load_weights_file(path)
    if kind == "state" and is_ast_state(raw):
        if modality != "spectrogram":
            raise CheckpointError(f"{path}: an AST (audio spectrogram transformer) checkpoint initialises the "
                                  f"spectrogram stream, not {modality}")
        return ast_from_state(raw, str(path), freq_patches)
    return vit_from_raw(kind, raw, str(path))


@dataclass
class InitReport(ViTInitReport):
    """What `init_streams` did: `parts` says where each part came from (e.g. 'rgb stream' -> the source), the
    inherited lists what was loaded, left as initialised and not used."""

    parts: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"initialised from pretrained weights: {len(self.loaded)} tensors loaded, {len(self.untouched)} "
                 "left as initialised"]
        lines += [f"  {part}: {where}" for part, where in self.parts.items()]
        if self.untouched:
            lines.append("  left as initialised: " + ", ".join(self.untouched))
        lines += [f"  not used: {part} ({why})" for part, why in self.dropped.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def init_streams(model: MBT, sources: Mapping[str, str | Path | Source | None] | None = None, *,
                 checkpoint: str | Path | ViTWeights | None = None, kernel_init: str = "central_frame",
                 init_bottleneck: bool = True, restore_output_proj: bool = False,
                 encoder_norm_from: str | None = None) -> InitReport:
    """Initialise `model` in place: each modality of `sources` from its own encoder, the rest from `checkpoint`.

    Args:
      model: the MBT to initialise.
      sources: modality ('rgb' / 'spectrogram') -> a path (see `read_encoder`) or what it reads; None entries are
        skipped.
      checkpoint: an ImageNet ViT for every stream first (Scenic's rules, as `init_from_vit`), or None.
      kernel_init, init_bottleneck, restore_output_proj: as `init_from_vit`, for ViT sources. The bottleneck tokens
        come from `checkpoint`, else from the first ViT or AST source (rgb first).
      encoder_norm_from: the modality whose source gives the shared final LayerNorm when there is no `checkpoint`
        (default: the first of `modality_fusion` with a source).
    Returns: an `InitReport` (`summary()` for people).
    Raises: CheckpointError / ConfigError naming the source and the mismatch; the model is unchanged then.
    """
    cfg = model.config
    given = {m: s for m, s in (sources or {}).items() if s is not None}
    wrong = sorted(set(given) - set(cfg.modality_fusion))
    if wrong:
        raise ConfigError(f"an initial encoder is given for {wrong}, but the model's modalities are "
                          f"{list(cfg.modality_fusion)}")
    streams = {m: s if isinstance(s, (ViTWeights, MBTEncoder)) else read_encoder(s, m) for m, s in given.items()}
    base = checkpoint
    if base is not None and not isinstance(base, ViTWeights):
        base = read_vit_checkpoint(base)
    if not streams and base is None:
        raise ConfigError("nothing to initialise from: give a ViT checkpoint or a source per modality")
    if cfg.share_encoder and streams and (len(streams) > 1 or base is not None or len(cfg.modality_fusion) > 1):
        raise ConfigError("the model shares one encoder between its modalities (share_encoder=True), so one source "
                          "initialises it: give only the ViT checkpoint, or build the model with separate encoders")

    writes: dict[str, Tensor] = {}
    names = [s.source for s in ([base] if base is not None else []) + list(streams.values())]
    report = InitReport(source=", ".join(dict.fromkeys(names)))
    if base is not None:
        plan = plan_vit_init(model, base, kernel_init=kernel_init, init_bottleneck=init_bottleneck,
                             restore_output_proj=restore_output_proj)
        writes.update(plan.writes)
        report.dropped.update(plan.report.dropped)
        report.notes += [f"{Path(base.source).name}: {n}" for n in plan.report.notes]
        report.parts["every stream"] = f"{base.source} ({base.describe()})"
    elif restore_output_proj:
        raise ConfigError("restore_output_proj needs a ViT checkpoint for the whole model (checkpoint=...)")

    for m in cfg.modality_fusion:
        if m not in streams:
            continue
        src = streams[m]
        stream_writes, notes, what = (_plan_vit_stream(model, m, src, kernel_init) if isinstance(src, ViTWeights)
                                      else _plan_mbt_stream(model, m, src))
        writes.update(stream_writes)
        report.notes += [f"{m}: {n}" for n in notes]
        report.parts[f"{m} stream ({what})"] = f"{src.source} ({src.describe()})"

    if base is None:
        m = encoder_norm_from or next(m for m in cfg.modality_fusion if m in streams)
        if m not in streams:
            raise ConfigError(f"encoder_norm_from = {m!r} has no source; give one of {sorted(streams)}")
        src = streams[m]
        norm = src.encoder_norm if isinstance(src, ViTWeights) else {
            k: src.state[f"encoder_norm.{k}"] for k in ("weight", "bias")}
        writes["encoder_norm.weight"], writes["encoder_norm.bias"] = norm["weight"], norm["bias"]
        shared = " (shared by the streams)" if len(cfg.modality_fusion) > 1 else ""
        report.parts[f"encoder_norm{shared}"] = f"the {m} source's"
        writes.update(_plan_stream_bottleneck(model, streams, init_bottleneck, report))
    _check_shapes(model, writes)
    write_init(model, writes, report)
    return report


def _plan_vit_stream(model: MBT, m: str, vit: ViTWeights, kernel_init: str
                     ) -> tuple[dict[str, Tensor], list[str], str]:
    """A ViT or AST into stream `m`: its blocks into the stream's encoder, its patch kernel, position grid and
    class token into the tokenizer (Scenic's rules; the class token is always copied)."""
    plan = _Plan(model, vit)
    check_architecture(plan, model.config)
    plan_blocks(plan, "shared" if model.config.share_encoder else m)
    plan_tokenizer(plan, model.config, m, kernel_init, restore_spectrogram_cls=True)
    return plan.writes, plan.report.notes, f"tokenizer, {vit.num_layers} blocks"


def _plan_mbt_stream(model: MBT, m: str, src: MBTEncoder) -> tuple[dict[str, Tensor], list[str], str]:
    """Stream `m` of an mbt model into stream `m`: tokenizer and encoder blocks, unchanged."""
    cfg, theirs = model.config, src.config
    for name in _ARCHITECTURE:
        if getattr(theirs, name) != getattr(cfg, name):
            raise CheckpointError(f"{src.source}: its {name} is {getattr(theirs, name)} but the model's is "
                                  f"{getattr(cfg, name)}; build the model with the source's architecture "
                                  f"({', '.join(f'{n}={getattr(theirs, n)}' for n in _ARCHITECTURE)})")
    geometry = {"rgb": ("temporal_encoding", "rgb_patch_size", "n_sampled_frames", "num_frames", "image_size"),
                "spectrogram": ("spectrogram_patch_size", "spectrogram_shape")}[m]
    differ = [f"{n} = {getattr(theirs, n)} (model: {getattr(cfg, n)})" for n in geometry
              if getattr(theirs, n) != getattr(cfg, n)]
    if differ:
        raise CheckpointError(f"{src.source}: its {m} input differs from the model's: {'; '.join(differ)}; build "
                              "the model with the source's input geometry")
    notes: list[str] = []
    writes: dict[str, Tensor] = {}
    prefix = f"tokenizers.{m}."
    kernel = src.state[prefix + "patch_embed.proj.weight"]
    channels = cfg.rgb_channels if m == "rgb" else cfg.spectrogram_channels
    if kernel.shape[1] != channels:
        if m == "rgb" or 1 not in (kernel.shape[1], channels):
            raise CheckpointError(f"{src.source}: its {m} input has {kernel.shape[1]} channels, the model's "
                                  f"{channels}; set {m}_channels={kernel.shape[1]}")
        kernel = spectrogram_kernel(kernel, channels)
        notes.append(channel_note(src.state[prefix + "patch_embed.proj.weight"].shape[1], channels))
    writes[prefix + "patch_embed.proj.weight"] = kernel
    writes[prefix + "patch_embed.proj.bias"] = src.state[prefix + "patch_embed.proj.bias"]

    pos = src.state[prefix + "pos_embedding"]  # (1, [cls +] grid, D)
    ours_token, theirs_token = cfg.classifier == "token", theirs.classifier == "token"
    if ours_token and theirs_token:
        writes[prefix + "cls"] = src.state[prefix + "cls"]
        writes[prefix + "pos_embedding"] = pos
    elif theirs_token:  # the model pools: no class token
        writes[prefix + "pos_embedding"] = pos[:, 1:]
        notes.append("the source's class token and its position not used (the model pools its tokens)")
    elif ours_token:  # the source pooled: the grid positions carry over, the class token and its position are new
        grid = pos
        pos = model.state_dict()[prefix + "pos_embedding"].clone()
        pos[:, 1:] = grid
        writes[prefix + "pos_embedding"] = pos
        notes.append("the source pools its tokens (no class token): the class token and its position are new")
    else:
        writes[prefix + "pos_embedding"] = pos

    stream = "shared" if theirs.share_encoder else m
    target = "shared" if cfg.share_encoder else m
    for key, value in src.state.items():
        if key.startswith(f"encoders.{stream}."):
            writes[f"encoders.{target}." + key[len(f"encoders.{stream}."):]] = value
    if theirs.fuses(training=True) and theirs.fusion_layer < theirs.num_layers:
        notes.append(f"the source fuses its streams ({theirs.describe_fusion()}): its {m} layers from "
                     f"{theirs.fusion_layer} on were trained on cross-modal input")
    return writes, notes, f"tokenizer, {theirs.num_layers} blocks"


def _plan_stream_bottleneck(model: MBT, streams: Mapping[str, Source], init_bottleneck: bool,
                            report: InitReport) -> dict[str, Tensor]:
    """Without a whole-model ViT: the bottleneck tokens from the first ViT/AST source, as Scenic initialises them
    from its ViT; else they stay as initialised."""
    cfg = model.config
    if not cfg.use_bottleneck:
        return {}
    vit = next((streams[m] for m in ("rgb", "spectrogram") if isinstance(streams.get(m), ViTWeights)), None)
    if not init_bottleneck or vit is None:
        report.notes.append("bottleneck left as initialised" + (" (init_bottleneck=False)" if not init_bottleneck
                            else " (no ViT or AST source: an mbt model directory has no bottleneck that fits)"))
        return {}
    plan = _Plan(model, vit)
    plan_bottleneck(plan, cfg, True)
    report.parts["bottleneck"] = f"{vit.source}'s position embeddings"
    return plan.writes


def _check_shapes(model: MBT, writes: Mapping[str, Tensor]) -> None:
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    unknown = sorted(k for k in writes if k not in shapes)
    wrong = [f"{k}: source {tuple(v.shape)}, model {shapes[k]}" for k, v in writes.items()
             if k in shapes and tuple(v.shape) != shapes[k]]
    if unknown or wrong:  # the checks above name the config fields; this is the last guard
        raise CheckpointError(f"the sources do not fit the model: {(unknown + wrong)[:5]}")


def input_differences(source: MBTEncoder, modality: str, data_config: DataConfig) -> list[str]:
    """The data fields, for `modality`, in which the inputs a source model was trained on (its
    preprocessor_config.json) differ from `data_config`: ['data.front_end.mean: source -1.69, this run -1.70',
    ...]. Empty when they agree or the source has no data config."""
    if source.data_config is None:
        return []
    ours = data_config.to_dict()
    out = []
    for name in _INPUT_FIELDS[modality]:
        a, b = source.data_config.get(name), ours.get(name)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += [f"data.{name}.{k}: source {a.get(k)!r}, this run {b.get(k)!r}" for k in sorted(set(a) | set(b))
                    if _plain(a.get(k)) != _plain(b.get(k))]
        elif _plain(a) != _plain(b):
            out.append(f"data.{name}: source {a!r}, this run {b!r}")
    return out


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


__all__ = ["MBTEncoder", "InitReport", "read_encoder", "init_streams", "input_differences"]
