"""Run configuration: a YAML file loaded into dataclasses, any field overridable on the command line.

    model:    MBTConfig fields, optionally starting from a preset (`preset: mbt-b16x2`)
    data:     mbt.data.DataConfig fields (decoding, clip sampling, audio front end, augmentation incl. mixup);
              shapes default to the model's (frames, crop, spectrogram window and mel bins)
    dataset:  train / val / test annotation files (format, video folder, label list, split)
    init:     where the weights start: an ImageNet ViT for every stream, or a pretrained encoder per stream
    optim:    optimiser, schedule, batch size, clipping, label smoothing, epochs
    train:    output folder, seed, device, precision, checkpoints, logging, evaluation cadence

Overrides use dotted paths, values in YAML syntax: `--optim.lr 0.1`, `--model.fusion_layer=4`,
`--data.augment.mixup_alpha 0`, `--dataset.val null`. An unknown key is an error that lists the known ones.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..data.annotations import Annotations, detect_format, read_annotations
from ..data.config import DataConfig
from ..errors import ConfigError
from ..models.config import MODALITIES, PRESETS, MBTConfig
from ..weights.vit import KERNEL_INITS

PRECISIONS = ("auto", "fp32", "bf16")
AUTO_STATS_KEYS = ("mean", "std")


@dataclass
class SplitConfig:
    """One annotation file and how to read it (the arguments of `mbt.data.read_annotations`)."""

    annotations: str = ""
    format: str = "auto"
    video_dir: str | None = None
    labels: str | None = None
    """AudioSet: class_labels_indices.csv; EPIC: the folder with the class CSVs; others: one label name per line."""
    split: str | None = None
    """VGGSound: keep only rows of this split ('train' or 'test')."""
    max_clips: int | None = None
    """Use only the first N clips (quick runs)."""

    def __post_init__(self) -> None:
        if not self.annotations:
            raise ConfigError("dataset split: 'annotations' (the annotation file) is required")

    def read(self, label_names: Sequence[str] | None = None) -> Annotations:
        """Read the annotation file; `label_names` (the training classes) fixes the label space of VGGSound,
        Kinetics and CSV files that do not name their label list (AudioSet and EPIC name their classes in their
        own class files). An error names the file when no clip has a media file."""
        labels: Any = self.labels
        fmt = detect_format(self.annotations) if self.format == "auto" else self.format
        if labels is None and label_names is not None and fmt in ("vggsound", "kinetics", "csv"):
            labels = list(label_names)
        ann = read_annotations(self.annotations, format=self.format, video_dir=self.video_dir, labels=labels,
                               split=self.split)
        if self.max_clips is not None:
            ann.records = ann.records[: self.max_clips]
        if not ann.records:
            raise ConfigError(f"{self.annotations}: no clip with a media file (check video_dir = "
                              f"{self.video_dir!r})")
        return ann


def task_of(ann: Annotations) -> dict[str, Any]:
    """The model's task fields (num_classes, label_names, problem_type, heads) from the training annotations."""
    return dict(num_classes=ann.num_classes, label_names=tuple(ann.label_names), problem_type=ann.problem_type,
                heads=dict(ann.heads) if ann.heads else None)


@dataclass
class DatasetConfig:
    train: SplitConfig | None = None
    val: SplitConfig | None = None
    """Validated every `train.eval_every_epochs` with one middle clip per video."""
    test: SplitConfig | None = None
    """Evaluated at the end with `data.num_test_clips` clips per video (logits averaged), into <output>/eval."""


@dataclass
class InitConfig:
    """Where the weights start (reference C; mbt.weights.init_streams). All null: from scratch.

    `checkpoint` is one ImageNet ViT for every stream, as in the paper. `rgb` / `spectrogram` give a stream its own
    pretrained encoder instead: an ImageNet ViT file, an AST checkpoint (spectrogram only) or an mbt model
    directory that has the modality (e.g. the `video` and `audio` models of `mbt demo`)."""

    checkpoint: str | None = None
    rgb: str | None = None
    """The rgb stream's encoder: a ViT file or an mbt model directory with an rgb stream."""
    spectrogram: str | None = None
    """The spectrogram stream's encoder: a ViT file, an AST checkpoint or an mbt model directory with audio."""
    encoder_norm_from: str | None = None
    """Without `checkpoint`: the modality whose source gives the final LayerNorm, which the streams share
    (default: the first of model.modality_fusion that has a source)."""
    kernel_init: str = "central_frame"
    """rgb tubelet kernel from the 2-D patch kernel (mbt.weights.vit.KERNEL_INITS): 'central_frame' (official),
    'average' (inflation) or 'average_arp'."""
    init_bottleneck: bool = True
    """Bottleneck tokens from the ViT position embeddings (official)."""
    restore_output_proj: bool = False

    def __post_init__(self) -> None:
        if self.kernel_init not in KERNEL_INITS:
            raise ConfigError(f"init.kernel_init = {self.kernel_init!r}; allowed: {KERNEL_INITS}")
        if self.encoder_norm_from is not None and self.encoder_norm_from not in MODALITIES:
            raise ConfigError(f"init.encoder_norm_from = {self.encoder_norm_from!r}; allowed: {MODALITIES}")

    @property
    def streams(self) -> dict[str, str]:
        """The per-stream sources that are set: modality -> path."""
        return {m: getattr(self, m) for m in MODALITIES if getattr(self, m)}


@dataclass
class OptimConfig:
    name: str = "sgd"
    """'sgd' (momentum, the official optimiser) or 'adamw'."""
    lr: float = 0.5
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    """Applied to kernels only (not biases, norms, position embeddings, CLS or bottleneck tokens)."""
    batch_size: int = 64
    """Global clips per optimiser step (over all processes and accumulation steps)."""
    grad_accum_steps: int = 1
    epochs: float = 50.0
    max_steps: int | None = None
    """If set, the number of optimiser steps (instead of epochs)."""
    warmup_epochs: float = 2.5
    max_grad_norm: float | None = 1.0
    """Global gradient-norm clipping (None: off)."""
    label_smoothing: float = 0.3

    def __post_init__(self) -> None:
        from .optim import OPTIMIZERS

        self.betas = tuple(float(b) for b in self.betas)
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optim.name = {self.name!r}; allowed: {OPTIMIZERS}")
        for name in ("batch_size", "grad_accum_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"optim.{name} = {getattr(self, name)!r}: must be an integer >= 1")
        if self.batch_size % self.grad_accum_steps:
            raise ConfigError(f"optim.batch_size = {self.batch_size} is not divisible by optim.grad_accum_steps = "
                              f"{self.grad_accum_steps}")
        if not self.lr > 0 or self.epochs <= 0 or self.warmup_epochs < 0:
            raise ConfigError("optim: lr and epochs must be > 0 and warmup_epochs >= 0 "
                              f"(got lr={self.lr}, epochs={self.epochs}, warmup_epochs={self.warmup_epochs})")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ConfigError(f"optim.max_steps = {self.max_steps!r}: must be an integer >= 1 or null")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"optim.label_smoothing = {self.label_smoothing!r}: must be in [0, 1)")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"optim.max_grad_norm = {self.max_grad_norm!r}: must be > 0 or null")


@dataclass
class TrainConfig:
    output_dir: str = "runs/mbt"
    seed: int = 0
    device: str = "auto"
    """'auto' (the local CUDA GPU under torchrun, else GPU 0, else CPU), 'cpu', 'cuda', 'cuda:1', ..."""
    precision: str = "auto"
    """'auto': bf16 autocast on a GPU that supports it, fp32 otherwise; 'fp32'; 'bf16' (GPU only)."""
    activation_checkpointing: bool = False
    num_workers: int = 4
    """DataLoader worker processes per training process."""
    cache_decoded: bool = False
    """Keep every decoded clip in memory and decode each file once (small datasets such as AV-Digits, read for many
    epochs). Needs num_workers: 0 (workers start afresh each epoch and would lose it); memory is about the decoded
    size of the training, validation and test clips."""
    eval_batch_size: int | None = None
    """Videos per evaluation batch per process (default: the training micro-batch)."""
    clips_per_forward: int = 8
    """Clips run through the model at once in multi-clip testing."""
    eval_every_epochs: float = 1.0
    """Validation cadence (needs dataset.val); 0: only at the end."""
    checkpoint_every_steps: int = 500
    keep_checkpoints: int = 3
    log_every_steps: int = 10
    tensorboard: bool = True
    progress: bool = True
    """A tqdm progress bar (rank 0)."""
    stats_max_clips: int = 500
    """With data.front_end mean/std 'auto': the training clips (the first N) the statistics are measured on."""
    max_nonfinite_steps: int = 5
    """A step whose loss or gradient is NaN or inf is skipped (logged with its files); this many in a row stop the
    run with an error."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision = {self.precision!r}; allowed: {PRECISIONS}")
        for name in ("checkpoint_every_steps", "keep_checkpoints", "log_every_steps", "clips_per_forward",
                     "stats_max_clips", "max_nonfinite_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"train.{name} = {getattr(self, name)!r}: must be an integer >= 1")
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers = {self.num_workers!r}: must be >= 0")
        if self.cache_decoded and self.num_workers:
            raise ConfigError(f"train.cache_decoded needs train.num_workers = 0 (got {self.num_workers}): DataLoader "
                              "workers start afresh each epoch and would lose the cache")
        if self.eval_every_epochs < 0:
            raise ConfigError(f"train.eval_every_epochs = {self.eval_every_epochs!r}: must be >= 0 (0: at the end)")


@dataclass
class RunConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "mbt-b16x2"})
    """MBTConfig fields; `preset` names a starting point (see mbt.PRESETS). num_classes, label_names,
    problem_type and heads come from the training annotations."""
    data: dict[str, Any] = field(default_factory=dict)
    """DataConfig fields; unset shapes follow the model."""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    init: InitConfig = field(default_factory=InitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ------------------------------------------------------------------ building the parts
    def model_config(self, **task: Any) -> MBTConfig:
        """The MBTConfig: preset, then the `model` fields, then `task` (num_classes, label_names, ...)."""
        fields = dict(self.model)
        preset = fields.pop("preset", None)
        known = {f.name for f in dataclasses.fields(MBTConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(f"model: unknown MBTConfig field(s) {unknown}; known: ['preset'] + {sorted(known)}")
        for key, value in task.items():
            if key in fields and fields[key] is not None and _plain(fields[key]) != _plain(value):
                raise ConfigError(f"model.{key} = {fields[key]!r} but the training annotations give {value!r}; "
                                  f"remove model.{key} from the config (it is taken from the annotations)")
        fields.update(task)
        if preset is not None:
            return MBTConfig.from_preset(preset, **fields)
        return MBTConfig(**fields)

    def data_config(self, model_config: MBTConfig) -> DataConfig:
        """The DataConfig: the `data` fields, with shapes (modalities, frames, crop, window, mel bins) defaulting to
        the model's; checked against the model."""
        d = copy.deepcopy(self.data)
        known = {f.name for f in dataclasses.fields(DataConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"data: unknown DataConfig field(s) {unknown}; known: {sorted(known)}")
        d.setdefault("modalities", list(model_config.modality_fusion))
        d.setdefault("num_frames", model_config.num_frames)
        d.setdefault("crop_size", list(model_config.image_size))
        d.setdefault("spec_frames", model_config.spectrogram_shape[0])
        front_end = dict(d.get("front_end") or {})
        front_end.setdefault("num_mel_bins", model_config.spectrogram_shape[1])
        for key in AUTO_STATS_KEYS:  # 'auto': measured on the training clips by the trainer
            if front_end.get(key) == "auto":
                front_end.pop(key)
        d["front_end"] = front_end
        config = DataConfig.from_dict(d, source="data")
        config.check_model(model_config)
        return config

    @property
    def auto_stats(self) -> bool:
        """True if data.front_end.mean / std are 'auto' (measured on the training clips before training)."""
        front_end = (self.data or {}).get("front_end") or {}
        auto = [k for k in AUTO_STATS_KEYS if front_end.get(k) == "auto"]
        if len(auto) == 1:
            raise ConfigError(f"data.front_end.{auto[0]} is 'auto' but the other statistic is not; set both mean "
                              "and std to 'auto', or both to numbers (`mbt stats` measures them)")
        return bool(auto)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return _plain(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> "RunConfig":
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source}: expected a mapping of sections {_section_names()}, got "
                              f"{type(d).__name__}")
        unknown = sorted(set(d) - set(_section_names()))
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {unknown}; known: {_section_names()}")
        try:
            for name in ("model", "data"):
                if d.get(name) is not None and not isinstance(d[name], Mapping):
                    raise ConfigError(f"{name}: expected a mapping of fields, got {d[name]!r}")
            model = dict(d.get("model") or {})
            data = dict(d.get("data") or {})
            _check_types(model, MBTConfig, "model")
            _check_types(data, DataConfig, "data")
            ds = d.get("dataset") or {}
            _check_keys(ds, DatasetConfig, "dataset")
            dataset = DatasetConfig(**{k: _build(SplitConfig, v, f"dataset.{k}") if v is not None else None
                                       for k, v in ds.items()})
            return cls(model=model, data=data, dataset=dataset,
                       init=_build(InitConfig, d.get("init") or {}, "init"),
                       optim=_build(OptimConfig, d.get("optim") or {}, "optim"),
                       train=_build(TrainConfig, d.get("train") or {}, "train"))
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> "RunConfig":
        """Load a YAML file and apply command-line overrides (`--a.b value` / `--a.b=value` tokens)."""
        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file (see configs/ for examples)") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
        if not isinstance(d, Mapping):
            raise ConfigError(f"{path}: the top level must be a mapping of sections {_section_names()}, got "
                              f"{type(d).__name__} {d!r:.60}")
        d = apply_overrides(d, parse_overrides(overrides))
        return cls.from_dict(d, source=str(path))

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# ---------------------------------------------------------------------------------------------------- overrides
def parse_overrides(tokens: Sequence[str]) -> list[tuple[str, Any]]:
    """['--optim.lr', '0.1', '--model.fusion_layer=4'] -> [('optim.lr', 0.1), ('model.fusion_layer', 4)].
    Values are parsed as YAML (numbers, true/false, null, [lists])."""
    out, i, tokens = [], 0, list(tokens)
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or len(tok) < 3:
            raise ConfigError(f"override {tok!r}: expected --section.key value (e.g. --optim.lr 0.1)")
        key = tok[2:]
        if "=" in key:
            key, text = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise ConfigError(f"override --{key} has no value (e.g. --{key} 0.1 or --{key}=0.1)")
            text = tokens[i + 1]
            i += 2
        if "." not in key:
            raise ConfigError(f"override --{key}: give a dotted path such as --optim.lr or --model.fusion_layer "
                              f"(sections: {_section_names()})")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        out.append((key.replace("-", "_"), value))
    return out


def apply_overrides(d: Mapping[str, Any], overrides: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    d = copy.deepcopy(dict(d))
    for key, value in overrides:
        parts = key.split(".")
        if parts[0] not in _section_names():
            raise ConfigError(f"override --{key}: unknown section {parts[0]!r}; known: {_section_names()}")
        node = d
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return d


# ---------------------------------------------------------------------------------------------------- helpers
def _section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def _check_keys(d: Any, cls: type, where: str) -> None:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {d!r}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {known}")


def _build(cls: type, d: Any, where: str):
    _check_keys(d, cls, where)
    d = {f.name: _typed(d[f.name], str(f.type), f"{where}.{f.name}") for f in dataclasses.fields(cls) if f.name in d}
    try:
        return cls(**d)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if not str(e).startswith(where) else str(e)) from None
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


# Nested config dataclasses inside the `data` section, by field name.
_NESTED = {"front_end": "FrontEndConfig", "augment": "AugmentConfig"}


def _check_types(d: dict[str, Any], cls: type, where: str) -> None:
    """Check the values of a `model` or `data` section against the field types of `cls` (and of the nested
    front_end and augment configs) before anything is built, so an error names the dotted field
    (`data.front_end.mean = 'abc': expected a finite number`). Numbers written as strings (5e-4) are converted;
    unknown keys are left to the config's own check, which lists the known ones."""
    from ..data.audio import FrontEndConfig
    from ..data.config import AugmentConfig

    nested = {"FrontEndConfig": FrontEndConfig, "AugmentConfig": AugmentConfig}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in list(d.items()):
        if key not in fields or value is None:
            continue
        if key in _NESTED and isinstance(value, Mapping):
            sub = dict(value)
            _check_types(sub, nested[_NESTED[key]], f"{where}.{key}")
            d[key] = sub
        elif not (key in AUTO_STATS_KEYS and value == "auto"):
            d[key] = _typed(value, str(fields[key].type), f"{where}.{key}")


def _typed(value: Any, annotation: str, where: str) -> Any:
    """Check (and normalise) a config value against its field annotation, naming the field on error."""
    base = annotation.replace(" ", "")
    optional = base.endswith("|None")
    base = base.removesuffix("|None")
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} = null: a value is required")
    if base == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r}: expected true or false")
    elif base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} = {value!r}: expected an integer")
    elif base == "float":
        if isinstance(value, str):  # PyYAML reads 5e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where} = {value!r}: expected a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where} = {value!r}: expected a finite number")
        value = float(value)
    elif base == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r}: expected a string")
    elif base.startswith("tuple[int,int") and not (isinstance(value, int) and not isinstance(value, bool)):
        n = base.count("int")  # a single integer stands for a square (image_size: 224)
        if (not isinstance(value, (list, tuple)) or len(value) != n
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise ConfigError(f"{where} = {value!r}: expected a list of {n} integers")
    elif base.startswith("tuple[float"):
        n = base.count("float")
        if (not isinstance(value, (list, tuple)) or len(value) != n
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise ConfigError(f"{where} = {value!r}: expected a list of {n} numbers")
        value = tuple(float(v) for v in value)
    return value


def _plain(x: Any) -> Any:
    """Tuples -> lists, recursively (YAML/JSON-ready)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


__all__ = ["RunConfig", "SplitConfig", "DatasetConfig", "InitConfig", "OptimConfig", "TrainConfig",
           "parse_overrides", "apply_overrides", "task_of", "PRESETS"]
