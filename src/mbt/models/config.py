"""`MBTConfig`: the architecture of an MBT model, with Scenic's field names.

The fields carry the names of Scenic's `MBT` module (`modality_fusion`, `fusion_layer`, `use_bottleneck`,
`n_bottlenecks`, `test_with_bottlenecks`, `share_encoder`, ...) so a Scenic config maps onto it one to one. Three
things differ from Scenic, each because a PyTorch model has to know it up front or because Scenic could not say it:

* the input geometry (`num_frames`, `image_size`, `spectrogram_shape`, channels): Flax sizes the position embeddings
  from the first batch it sees, a PyTorch module needs the token grid when it is built;
* the spectrogram has its own patch size (`spectrogram_patch_size`); Scenic ties it to `patches.size[:2]`;
* patch sizes are written in the order of the channels-first tensors they cut: rgb `(t, h, w)`, spectrogram
  `(time, mel)`. Scenic's `patches.size` is `[h, w, t]`; `from_scenic` reorders it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError

MODALITIES = ("rgb", "spectrogram")
# What a person calls each modality's stream (tables, reports, messages): the frames are the video, the log-mel
# spectrogram is the audio.
STREAM = {"rgb": "video", "spectrogram": "audio"}
PROBLEM_TYPES = ("multi_label", "single_label", "multi_head")
# The task a model with no recorded problem_type is treated as (a converted Scenic checkpoint: AudioSet's).
DEFAULT_PROBLEM_TYPE = "multi_label"
# How the streams exchange information in one layer (see `MBTConfig.layer_fusion` and `mbt.models.mbt.fusion_plan`).
FUSION_KINDS = ("unimodal", "bottleneck", "vanilla_shared", "vanilla_separate")
CLASSIFIERS = ("token", "gap", "gmp", "gsp")
TEMPORAL_ENCODINGS = ("3d_conv", "temporal_sampling")

# Keys a saved config.json may carry besides the fields: written by `to_dict`, ignored when read.
_META_KEYS = ("model_type", "format_version")
FORMAT_VERSION = 1


@dataclass
class MBTConfig:
    """Architecture of an MBT model. Defaults are MBT-B/16x2 on AudioSet (the `mbt-b16x2` preset).

    Inputs the model built from this config takes (channels first, see `mbt.MBT`):
      rgb:         (B, rgb_channels, num_frames, image_size[0], image_size[1]), values in [-1, 1]
      spectrogram: (B, spectrogram_channels, spectrogram_shape[0] (time), spectrogram_shape[1] (mel))
    """

    # --- fusion (Scenic names) ---
    modality_fusion: tuple[str, ...] = ("spectrogram", "rgb")
    """Modalities used, subset of ('rgb', 'spectrogram'). The order sets the order of the output token sequence."""
    fusion_layer: int = 8
    """First layer with cross-modal exchange: 0 = early fusion, num_layers = late fusion (no exchange)."""
    use_bottleneck: bool = True
    """Bottleneck fusion (MBT) if True, vanilla cross-attention if False."""
    n_bottlenecks: int = 4
    """Number of bottleneck tokens; the parameter holds one more when classifier == 'token' (as in Scenic)."""
    test_with_bottlenecks: bool = True
    """If False, a bottleneck model does no cross-modal exchange at all in eval mode (Scenic's semantics)."""
    share_encoder: bool = False
    """One set of encoder-block weights for all modalities."""

    # --- transformer ---
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072

    # --- head ---
    classifier: str = "token"
    """'token' (one CLS per modality, logits averaged), or pooling over all tokens: 'gap' (mean), 'gmp' (max),
    'gsp' (sum)."""
    representation_size: int | None = None
    """If set, a Dense + tanh `pre_logits` layer of this width before the classifier."""
    num_classes: int = 527

    # --- task (what the classes mean; written by training, read by evaluation and prediction) ---
    label_names: tuple[str, ...] | None = None
    """One name per class (Hugging Face's id2label), in logit order."""
    problem_type: str | None = None
    """'multi_label' (sigmoid per class: AudioSet), 'single_label' (softmax: VGGSound, Kinetics) or 'multi_head'
    (one softmax per head: EPIC-KITCHENS verb + noun). None: not known (e.g. a converted Scenic checkpoint)."""
    heads: dict[str, int] | None = None
    """'multi_head' only: {head name: classes}, in the order the logits concatenate them; sums to num_classes."""

    # --- regularisation (training only) ---
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_droplayer_rate: float = 0.3
    """Maximum stochastic-depth rate, reached at the last layer (per-example, no rescaling, as in Scenic)."""

    # --- rgb tokenisation ---
    temporal_encoding: str = "3d_conv"
    """'3d_conv' (tubelets) or 'temporal_sampling' (n_sampled_frames frames stacked into one tall image)."""
    rgb_patch_size: tuple[int, int, int] = (2, 16, 16)
    """(t, h, w). With 'temporal_sampling', t must be 1."""
    n_sampled_frames: int | None = None
    """Frames kept by 'temporal_sampling'."""
    num_frames: int = 32
    image_size: tuple[int, int] = (224, 224)
    """(height, width) of the rgb frames."""
    rgb_channels: int = 3

    # --- spectrogram tokenisation ---
    spectrogram_patch_size: tuple[int, int] = (16, 16)
    """(time, mel)."""
    spectrogram_shape: tuple[int, int] = (800, 128)
    """(time frames, mel bins) of the input spectrogram."""
    spectrogram_channels: int = 3
    """Channels of the spectrogram patch kernel. The 1-channel log-mel input is copied to each, as Scenic's pipeline
    copies it 3 times: with 3 (Scenic's models, an ImageNet ViT's kernel) the kernel trains as Scenic's. With 1 the
    same embedding is one summed kernel, which moves a third as far per SGD step."""

    def __post_init__(self) -> None:
        # Normalise sequences (JSON gives lists) so configs compare equal and hash the same way.
        self.modality_fusion = tuple(self.modality_fusion) if not isinstance(self.modality_fusion, str) else (
            self.modality_fusion,)
        for name in ("rgb_patch_size", "image_size", "spectrogram_patch_size", "spectrogram_shape"):
            value = getattr(self, name)
            if isinstance(value, int):
                value = (value,) * (3 if name == "rgb_patch_size" else 2)
            setattr(self, name, tuple(value))
        if self.label_names is not None and not isinstance(self.label_names, str):
            self.label_names = tuple(str(n) for n in self.label_names)
        if isinstance(self.heads, Mapping):
            self.heads = {str(k): v for k, v in self.heads.items()}
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid field, its value and what is allowed."""

        def fail(name: str, allowed: str) -> None:
            raise ConfigError(f"MBTConfig.{name} = {getattr(self, name)!r} is invalid: {allowed}")

        if not self.modality_fusion:
            fail("modality_fusion", f"give at least one of {MODALITIES}")
        for m in self.modality_fusion:
            if m not in MODALITIES:
                raise ConfigError(
                    f"MBTConfig.modality_fusion contains unknown modality {m!r}; allowed: {MODALITIES}")
        if len(set(self.modality_fusion)) != len(self.modality_fusion):
            fail("modality_fusion", "each modality may appear once")
        for name in ("hidden_size", "num_layers", "num_heads", "mlp_dim", "num_classes", "rgb_channels",
                     "spectrogram_channels", "num_frames"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                fail(name, "must be an integer >= 1")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"MBTConfig.hidden_size = {self.hidden_size} is not divisible by num_heads = {self.num_heads}; "
                "choose num_heads that divides hidden_size (ViT-B: 768 and 12)")
        if not _is_int(self.fusion_layer) or not 0 <= self.fusion_layer <= self.num_layers:
            fail("fusion_layer", f"must be an integer in 0..num_layers = 0..{self.num_layers} "
                                 "(0 = early fusion, num_layers = late fusion)")
        if self.use_bottleneck and (not _is_int(self.n_bottlenecks) or self.n_bottlenecks < 1):
            fail("n_bottlenecks", "must be an integer >= 1 when use_bottleneck is True")
        if self.classifier not in CLASSIFIERS:
            fail("classifier", f"allowed: {CLASSIFIERS}")
        if self.representation_size is not None and (
                not _is_int(self.representation_size) or self.representation_size < 1):
            fail("representation_size", "must be None or an integer >= 1")
        for name in ("dropout_rate", "attention_dropout_rate", "stochastic_droplayer_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                fail(name, "must be a number in [0, 1)")
        if self.label_names is not None and (isinstance(self.label_names, str)
                                             or len(self.label_names) != self.num_classes):
            fail("label_names", f"give one name per class (num_classes = {self.num_classes}) or None")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            fail("problem_type", f"allowed: {PROBLEM_TYPES} or None")
        if self.heads is not None:
            if (not isinstance(self.heads, dict) or not self.heads
                    or not all(_is_int(k) and k >= 1 for k in self.heads.values())
                    or sum(self.heads.values()) != self.num_classes):
                fail("heads", f"give {{head name: classes}} with classes >= 1 summing to num_classes = "
                              f"{self.num_classes}, or None")
            if self.problem_type != "multi_head":
                fail("heads", "heads are for problem_type 'multi_head' only")
        elif self.problem_type == "multi_head":
            fail("heads", "problem_type 'multi_head' needs heads, e.g. {'verb': 97, 'noun': 300}")
        for name in ("use_bottleneck", "test_with_bottlenecks", "share_encoder"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "must be True or False")
        if self.temporal_encoding not in TEMPORAL_ENCODINGS:
            fail("temporal_encoding", f"allowed: {TEMPORAL_ENCODINGS}")
        if len(self.rgb_patch_size) != 3 or not all(_is_int(v) and v >= 1 for v in self.rgb_patch_size):
            fail("rgb_patch_size", "must be three integers >= 1: (t, h, w)")
        for name in ("image_size", "spectrogram_patch_size", "spectrogram_shape"):
            value = getattr(self, name)
            if len(value) != 2 or not all(_is_int(v) and v >= 1 for v in value):
                fail(name, "must be two integers >= 1")
        if self.temporal_encoding == "temporal_sampling":
            if self.rgb_patch_size[0] != 1:
                fail("rgb_patch_size", "its t must be 1 with temporal_encoding 'temporal_sampling' "
                                       "(frames are embedded with a 2-D patch)")
            if not _is_int(self.n_sampled_frames) or self.n_sampled_frames < 1:
                fail("n_sampled_frames", "must be an integer >= 1 with temporal_encoding 'temporal_sampling'")
        # The patches must fit the input at least once (VALID padding drops any remainder, as in Scenic).
        if "rgb" in self.modality_fusion:
            t, h, w = self.rgb_patch_size
            frames = self.num_frames if self.temporal_encoding == "3d_conv" else len(self.rgb_frame_indices)
            if frames < t or self.image_size[0] < h or self.image_size[1] < w:
                raise ConfigError(
                    f"MBTConfig.rgb_patch_size = {self.rgb_patch_size} does not fit the rgb input "
                    f"(num_frames={self.num_frames}, image_size={self.image_size}): each input side must be at "
                    "least the patch size")
        if "spectrogram" in self.modality_fusion:
            pt, pf = self.spectrogram_patch_size
            if self.spectrogram_shape[0] < pt or self.spectrogram_shape[1] < pf:
                raise ConfigError(
                    f"MBTConfig.spectrogram_patch_size = {self.spectrogram_patch_size} does not fit "
                    f"spectrogram_shape = {self.spectrogram_shape} (time, mel)")

    # ------------------------------------------------------------------ derived geometry
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def n_bottleneck_tokens(self) -> int:
        """Tokens in the `bottleneck` parameter: n_bottlenecks, plus one with the token classifier (Scenic)."""
        return self.n_bottlenecks + (1 if self.classifier == "token" else 0)

    @property
    def rgb_frame_indices(self) -> tuple[int, ...]:
        """Frames kept by 'temporal_sampling', computed exactly as Scenic's `temporal_encode` does.

        Scenic: `jnp.round(jnp.arange(T / (n + 1), T, T / (n + 1)))`, clipped to T - 1 (all frames if n >= T).
        jnp.arange on Python floats runs numpy's arange in float32, and jnp.round rounds half to even.
        """
        if self.temporal_encoding != "temporal_sampling":
            return tuple(range(self.num_frames))
        t, n = self.num_frames, self.n_sampled_frames
        start, step = (t / (n + 1), t / (n + 1)) if n < t else (0.0, 1.0)
        idx = np.round(np.arange(start, t, step, dtype=np.float32)).astype(np.int64)
        return tuple(int(i) for i in np.minimum(idx, t - 1))

    def token_grid(self, modality: str) -> tuple[int, ...]:
        """Patch grid of a modality, without CLS: rgb (t, h, w) (t = 1 for temporal_sampling, whose frames are
        stacked along h), spectrogram (time, mel)."""
        if modality == "rgb":
            t, h, w = self.rgb_patch_size
            if self.temporal_encoding == "3d_conv":
                return (self.num_frames // t, self.image_size[0] // h, self.image_size[1] // w)
            n = len(self.rgb_frame_indices)
            return (1, (n * self.image_size[0]) // h, self.image_size[1] // w)
        if modality == "spectrogram":
            pt, pf = self.spectrogram_patch_size
            return (self.spectrogram_shape[0] // pt, self.spectrogram_shape[1] // pf)
        raise ConfigError(f"unknown modality {modality!r}; allowed: {MODALITIES}")

    # ------------------------------------------------------------------ fusion rules
    @property
    def task(self) -> str:
        """The problem type the losses, metrics and scores use: `problem_type`, or 'multi_label' when unknown."""
        return self.problem_type or DEFAULT_PROBLEM_TYPE

    def fuses(self, training: bool) -> bool:
        """Whether the streams exchange anything at all. Scenic fuses only with two or more configured modalities,
        and a bottleneck model evaluated with test_with_bottlenecks=False does no exchange at all."""
        return len(self.modality_fusion) > 1 and not (
            self.use_bottleneck and not (training or self.test_with_bottlenecks))

    def layer_fusion(self, layer: int, training: bool) -> str:
        """How the streams exchange information at `layer` (one of FUSION_KINDS): 'unimodal' before fusion_layer
        (or without fusion), else 'bottleneck', 'vanilla_shared' (one block over all tokens) or
        'vanilla_separate' (each modality's block attends over every modality's tokens)."""
        if not self.fuses(training) or layer < self.fusion_layer:
            return "unimodal"
        if self.use_bottleneck:
            return "bottleneck"
        return "vanilla_shared" if self.share_encoder else "vanilla_separate"

    def uses_bottleneck(self, training: bool) -> bool:
        """Whether the bottleneck tokens take part in the forward pass (some layer is a 'bottleneck' layer). A
        bottleneck model with late fusion or one modality never uses them (DDP must then allow unused
        parameters); neither does one evaluated with test_with_bottlenecks=False."""
        return self.use_bottleneck and self.fuses(training) and self.fusion_layer < self.num_layers

    def describe_fusion(self) -> str:
        """'bottleneck fusion from layer 8 (4 bottlenecks)', 'vanilla fusion from layer 0', 'late fusion' or
        'no fusion (one modality)'."""
        if len(self.modality_fusion) == 1:
            return "no fusion (one modality)"
        if self.fusion_layer >= self.num_layers:
            return "late fusion"
        if self.use_bottleneck:
            return f"bottleneck fusion from layer {self.fusion_layer} ({self.n_bottlenecks} bottlenecks)"
        return f"vanilla fusion from layer {self.fusion_layer}" + (" (shared weights)" if self.share_encoder else "")

    def num_tokens(self, modality: str) -> int:
        """Tokens of a modality in the encoder, CLS included when classifier == 'token'."""
        return math.prod(self.token_grid(modality)) + (1 if self.classifier == "token" else 0)

    def select_modalities(self, modalities: Sequence[str] | None = None) -> list[str]:
        """The given modalities (default: all) in `modality_fusion` order; anything not configured is refused."""
        if modalities is None:
            return list(self.modality_fusion)
        wrong = [m for m in modalities if m not in self.modality_fusion]
        if wrong or not modalities:
            raise ConfigError(f"modalities {list(modalities)}: give one or more of the model's "
                              f"{list(self.modality_fusion)}")
        return [m for m in self.modality_fusion if m in modalities]

    def input_shape(self, modality: str) -> tuple[int, ...]:
        """Shape of one example of a modality, channels first: rgb (C, T, H, W), spectrogram (C, time, mel)."""
        if modality == "rgb":
            return (self.rgb_channels, self.num_frames, *self.image_size)
        if modality == "spectrogram":
            return (self.spectrogram_channels, *self.spectrogram_shape)
        raise ConfigError(f"unknown modality {modality!r}; allowed: {MODALITIES}")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: every field, plus `model_type` and `format_version`."""
        d: dict[str, Any] = {"model_type": "mbt", "format_version": FORMAT_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            d[f.name] = list(value) if isinstance(value, tuple) else value
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> "MBTConfig":
        """Build from `to_dict` output. Unknown keys are an error that names them and the file (`source`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - set(_META_KEYS))
        if unknown:
            raise ConfigError(f"{source}: unknown MBTConfig field(s) {unknown}; known fields: {sorted(names)}")
        if d.get("model_type", "mbt") != "mbt":
            raise ConfigError(f"{source}: model_type is {d['model_type']!r}, expected 'mbt'")
        kwargs = {k: v for k, v in d.items() if k in names}
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json_file(cls, path: str | Path) -> "MBTConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file (a model directory holds config.json and "
                              "model.safetensors)") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a JSON object of MBTConfig fields, got {type(d).__name__}")
        return cls.from_dict(d, source=str(path))

    def replace(self, **changes: Any) -> "MBTConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ Scenic
    @classmethod
    def from_scenic(cls, kwargs: Mapping[str, Any], input_shapes: Mapping[str, Sequence[int]]) -> "MBTConfig":
        """Build a config from Scenic's `MBT(...)` constructor arguments and the channels-last input shapes.

        Args:
          kwargs: the arguments of Scenic's `MBT` module (a fixture's `config_json`; a `_meta` key is ignored).
            Missing optional keys take the defaults of Scenic's `build_flax_model` (dropout 0.1, ...).
          input_shapes: shapes Scenic was called with, channels last, batch first, e.g.
            `{'rgb': [B, T, H, W, 3], 'spectrogram': [B, time, mel, 1]}`; one per modality in `modality_fusion`.
        """
        kw = {k: v for k, v in kwargs.items() if k != "_meta"}
        known = {"modality_fusion", "fusion_layer", "use_bottleneck", "n_bottlenecks", "test_with_bottlenecks",
                 "share_encoder", "hidden_size", "num_layers", "num_heads", "mlp_dim", "classifier",
                 "representation_size", "num_classes", "dropout_rate", "attention_dropout_rate",
                 "stochastic_droplayer_rate", "patches", "temporal_encoding_config", "attention_config",
                 "return_prelogits", "return_preclassifier", "dtype"}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise ConfigError(f"from_scenic: unknown Scenic MBT argument(s) {unknown}; known: {sorted(known)}")
        for required in ("hidden_size", "num_layers", "num_heads", "mlp_dim", "num_classes", "patches"):
            if required not in kw:
                raise ConfigError(f"from_scenic: Scenic MBT argument {required!r} is required")
        if str(kw.get("dtype", "float32")) not in ("float32", "<class 'jax.numpy.float32'>"):
            warnings.warn(f"from_scenic: Scenic dtype {kw['dtype']!r} is not part of MBTConfig; the model is built "
                          "in float32 (use model.to(dtype) or torch.autocast for lower precision)", stacklevel=2)
        attention_type = (kw.get("attention_config") or {}).get("type", "spacetime")
        if attention_type == "factorized_encoder":
            raise ConfigError("from_scenic: attention_config.type 'factorized_encoder' is not supported by MBT")
        classifier = kw.get("classifier", "gap")
        if classifier == "0":
            raise ConfigError("from_scenic: classifier '0' is accepted by Scenic's assertion but cannot run there "
                              "(no CLS token is created); use 'token', 'gap', 'gmp' or 'gsp'")
        modality_fusion = tuple(kw.get("modality_fusion", ("spectrogram",)))
        patch = list(kw["patches"]["size"])  # Scenic order: [h, w, t] (t only for 3d_conv)
        if len(patch) not in (2, 3):
            raise ConfigError(f"from_scenic: patches.size must have 2 or 3 entries [h, w(, t)], got {patch}")
        tec = dict(kw.get("temporal_encoding_config") or {})
        if "rgb" in modality_fusion and tec.get("method") not in TEMPORAL_ENCODINGS:
            raise ConfigError(f"from_scenic: temporal_encoding_config.method must be one of {TEMPORAL_ENCODINGS} "
                              f"for an rgb model, got {tec.get('method')!r}")
        method = tec.get("method", "3d_conv")  # unused without rgb
        if method == "3d_conv" and len(patch) != 3 and "rgb" in modality_fusion:
            raise ConfigError("from_scenic: temporal_encoding_config.method '3d_conv' needs patches.size [h, w, t]")
        rgb_patch = (patch[2] if (method == "3d_conv" and len(patch) == 3) else 1, patch[0], patch[1])
        missing = [m for m in modality_fusion if m not in input_shapes]
        if missing:
            raise ConfigError(f"from_scenic: input_shapes has no entry for {missing}; give the channels-last "
                              "shape Scenic was called with, e.g. {'rgb': [B, T, H, W, 3], "
                              "'spectrogram': [B, time, mel, 1]}")
        geometry: dict[str, Any] = {}
        if "rgb" in input_shapes:
            shape = list(input_shapes["rgb"])
            if len(shape) != 5:
                raise ConfigError(f"from_scenic: input_shapes['rgb'] must be [B, T, H, W, C], got {shape}")
            geometry.update(num_frames=shape[1], image_size=(shape[2], shape[3]), rgb_channels=shape[4])
        if "spectrogram" in input_shapes:
            shape = list(input_shapes["spectrogram"])
            if len(shape) != 4:
                raise ConfigError(f"from_scenic: input_shapes['spectrogram'] must be [B, time, mel, C], got {shape}")
            geometry.update(spectrogram_shape=(shape[1], shape[2]), spectrogram_channels=shape[3])
        return cls(
            modality_fusion=modality_fusion,
            fusion_layer=kw.get("fusion_layer", 0),
            use_bottleneck=bool(kw.get("use_bottleneck", False)),
            n_bottlenecks=kw.get("n_bottlenecks", 4),
            test_with_bottlenecks=bool(kw.get("test_with_bottlenecks", True)),
            share_encoder=bool(kw.get("share_encoder", False)),
            hidden_size=kw["hidden_size"],
            num_layers=kw["num_layers"],
            num_heads=kw["num_heads"],
            mlp_dim=kw["mlp_dim"],
            classifier=classifier,
            representation_size=kw.get("representation_size"),
            num_classes=kw["num_classes"],
            dropout_rate=kw.get("dropout_rate", 0.1),
            attention_dropout_rate=kw.get("attention_dropout_rate", 0.1),
            stochastic_droplayer_rate=kw.get("stochastic_droplayer_rate", 0.0),
            temporal_encoding=method,
            rgb_patch_size=rgb_patch,
            n_sampled_frames=tec.get("n_sampled_frames"),
            spectrogram_patch_size=(patch[0], patch[1]),  # Scenic ties the spectrogram patch to patches.size[:2]
            **geometry,
        )

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "MBTConfig":
        """A named configuration (see `PRESETS`), with fields overridden by keyword."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


PRESETS: dict[str, dict[str, Any]] = {
    # MBT-B/16x2 as in Scenic's AudioSet config: ViT-B, 32 frames x 224 px cut into 2x16x16 tubelets, an 8 s
    # spectrogram (800 x 128) in 16x16 patches, bottleneck fusion from layer 8 with 4 bottlenecks, token classifier,
    # 527 AudioSet classes, stochastic depth 0.3. Three spectrogram channels, as Scenic (its pipeline copies the
    # log-mel channel 3 times, and the released checkpoints and the ImageNet ViT have 3-channel kernels): mbt.data
    # gives one channel, which the model broadcasts. With one channel the summed kernel computes the same but
    # learns 3x slower than Scenic's.
    "mbt-b16x2": dict(
        modality_fusion=("spectrogram", "rgb"), fusion_layer=8, use_bottleneck=True, n_bottlenecks=4,
        test_with_bottlenecks=True, share_encoder=False, hidden_size=768, num_layers=12, num_heads=12,
        mlp_dim=3072, classifier="token", representation_size=None, num_classes=527, dropout_rate=0.0,
        attention_dropout_rate=0.0, stochastic_droplayer_rate=0.3, temporal_encoding="3d_conv",
        rgb_patch_size=(2, 16, 16), num_frames=32, image_size=(224, 224), rgb_channels=3,
        spectrogram_patch_size=(16, 16), spectrogram_shape=(800, 128), spectrogram_channels=3,
    ),
}
