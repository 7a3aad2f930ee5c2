"""`DataConfig`: everything between a video file and the model's input, stored beside the model.

A model directory holds it as `preprocessor_config.json` (next to config.json and model.safetensors), so a trained
model always gets the frames and features it was trained on. Field names follow Scenic's dataset config where one
exists (`num_frames`, `stride`, `min_resize`, `crop_size`, `num_test_clips`, the spectrogram mean and std).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from ..models.config import MODALITIES
from ..models.pretrained import PREPROCESSOR_NAME
from .audio import FrontEndConfig

MISSING_STREAM_POLICIES = ("flag", "error")


@dataclass
class AugmentConfig:
    """Training-time augmentation (reference D.3, D.6, D.7). Evaluation never augments."""

    scale_jitter: tuple[float, float] | None = (0.9, 1.33)
    """Independent height and width resize factors drawn from this range (None: off)."""
    flip: bool = True
    color_augment_prob: float = 0.8
    color_drop_prob: float = 0.1
    brightness: float = 32.0 / 255.0
    saturation: tuple[float, float] = (0.6, 1.4)
    contrast: tuple[float, float] = (0.6, 1.4)
    hue: float = 0.2
    freq_mask_count: int = 1
    freq_mask_max_bins: int = 48
    time_mask_count: int = 0
    time_mask_max_frames: int = 0
    mixup_alpha: float = 0.5
    """Beta(alpha, alpha) mixup in the train step, one lambda for both modalities and the labels (0: off)."""
    rgb_drop_prob: float = 0.0
    """Modality dropout: the share of training clips (after mixup) that train without their frames, as a clip with
    no video stream does (the model masks the stream for that clip). 0: off."""
    spectrogram_drop_prob: float = 0.0
    """The same for the audio. At most one stream is dropped per clip (the two probabilities sum to at most 1),
    never a clip's last stream; the draws depend only on the seed and the step."""

    def __post_init__(self) -> None:
        for name in ("scale_jitter", "saturation", "contrast"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in value)
                if len(value) != 2 or not 0 < value[0] <= value[1]:
                    raise ConfigError(f"AugmentConfig.{name} = {value!r}: give (low, high) with 0 < low <= high")
                setattr(self, name, value)
        for name in ("color_augment_prob", "color_drop_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"AugmentConfig.{name} = {getattr(self, name)!r}: must be in [0, 1]")
        for name in ("freq_mask_count", "freq_mask_max_bins", "time_mask_count", "time_mask_max_frames"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"AugmentConfig.{name} = {getattr(self, name)!r}: must be >= 0")
        if self.mixup_alpha < 0:
            raise ConfigError(f"AugmentConfig.mixup_alpha = {self.mixup_alpha!r}: must be >= 0 (0 turns mixup off)")
        for name in ("rgb_drop_prob", "spectrogram_drop_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"AugmentConfig.{name} = {getattr(self, name)!r}: must be in [0, 1]")
        if self.rgb_drop_prob + self.spectrogram_drop_prob > 1.0:
            raise ConfigError(f"AugmentConfig.rgb_drop_prob + spectrogram_drop_prob = "
                              f"{self.rgb_drop_prob + self.spectrogram_drop_prob:g}: at most one stream is dropped "
                              "per clip, so they must sum to at most 1")

    @property
    def modality_drop(self) -> dict[str, float]:
        """{modality: drop probability} of the streams with modality dropout on."""
        probs = {"rgb": self.rgb_drop_prob, "spectrogram": self.spectrogram_drop_prob}
        return {m: p for m, p in probs.items() if p > 0}


@dataclass
class DataConfig:
    """Decoding, clip sampling, audio front end and augmentation. Defaults: the official AudioSet MBT-B/16x2 input
    (32 frames at stride 2 of 25 fps video, 224 px crops of frames resized to 256; 8 s of 100-per-second log-mel
    frames, 128 bins; 4 test clips)."""

    modalities: tuple[str, ...] = ("spectrogram", "rgb")
    # --- rgb
    fps: float = 25.0
    """Frame rate at which frames are counted, whatever the file's own rate."""
    num_frames: int = 32
    stride: int = 2
    min_resize: int = 256
    """The shorter side of decoded frames (resized by FFmpeg)."""
    crop_size: tuple[int, int] = (224, 224)
    # --- spectrogram
    front_end: FrontEndConfig = field(default_factory=lambda: FrontEndConfig.preset("logmel"))
    spec_frames: int = 800
    """Spectrogram frames per window (8 s at 100 frames per second)."""
    # --- sampling
    num_test_clips: int = 4
    missing_stream: str = "flag"
    """A configured modality whose stream a file lacks: 'flag' (zeros, i.e. silence or black frames, and a
    `missing` flag) or 'error' (the file is an error, skipped with on_error='skip')."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.modalities, str):
            self.modalities = (self.modalities,)
        self.modalities = tuple(self.modalities)
        if isinstance(self.crop_size, int):
            self.crop_size = (self.crop_size, self.crop_size)
        self.crop_size = tuple(int(v) for v in self.crop_size)
        if isinstance(self.front_end, Mapping):
            self.front_end = FrontEndConfig.from_dict(self.front_end)
        if isinstance(self.augment, Mapping):
            self.augment = AugmentConfig(**self.augment)
        if not self.modalities or any(m not in MODALITIES for m in self.modalities):
            raise ConfigError(f"DataConfig.modalities = {self.modalities!r}: give one or more of {MODALITIES}")
        for name in ("num_frames", "stride", "min_resize", "spec_frames", "num_test_clips"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"DataConfig.{name} = {getattr(self, name)!r}: must be an integer >= 1")
        if not self.fps > 0:
            raise ConfigError(f"DataConfig.fps = {self.fps!r}: must be > 0")
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ConfigError(f"DataConfig.crop_size = {self.crop_size!r}: give (height, width) >= 1")
        if self.missing_stream not in MISSING_STREAM_POLICIES:
            raise ConfigError(f"DataConfig.missing_stream = {self.missing_stream!r}; allowed: "
                              f"{MISSING_STREAM_POLICIES}")

    # ------------------------------------------------------------------ geometry
    @property
    def spec_shape(self) -> tuple[int, int]:
        """(time, mel) of one spectrogram window."""
        return (self.spec_frames, self.front_end.num_mel_bins)

    @property
    def spec_rate(self) -> float:
        """Spectrogram frames per second."""
        return 1000.0 / self.front_end.frame_shift_ms

    def window_samples(self) -> int:
        """Waveform samples that give exactly `spec_frames` frames."""
        return self.front_end.num_samples(self.spec_frames)

    def check_model(self, model_config) -> None:
        """Raise ConfigError if these inputs do not fit `model_config` (an MBTConfig), naming both fields."""
        problems = []
        if set(model_config.modality_fusion) - set(self.modalities):
            problems.append(f"the model takes {list(model_config.modality_fusion)} but the data gives "
                            f"{list(self.modalities)} (DataConfig.modalities)")
        if "rgb" in model_config.modality_fusion:
            if model_config.num_frames != self.num_frames:
                problems.append(f"MBTConfig.num_frames = {model_config.num_frames} but DataConfig.num_frames = "
                                f"{self.num_frames}")
            if tuple(model_config.image_size) != self.crop_size:
                problems.append(f"MBTConfig.image_size = {tuple(model_config.image_size)} but DataConfig.crop_size ="
                                f" {self.crop_size}")
        if "spectrogram" in model_config.modality_fusion and tuple(model_config.spectrogram_shape) != self.spec_shape:
            problems.append(f"MBTConfig.spectrogram_shape = {tuple(model_config.spectrogram_shape)} but the data "
                            f"gives {self.spec_shape} (DataConfig.spec_frames, front_end.num_mel_bins)")
        if problems:
            raise ConfigError("data and model do not fit: " + "; ".join(problems))

    @classmethod
    def for_model(cls, model_config, **overrides: Any) -> "DataConfig":
        """A DataConfig whose shapes fit `model_config` (frames, crop, spectrogram window and mel bins)."""
        front_end = overrides.pop("front_end", None) or FrontEndConfig.preset(
            "logmel", num_mel_bins=model_config.spectrogram_shape[1])
        config = cls(modalities=tuple(model_config.modality_fusion), num_frames=model_config.num_frames,
                     crop_size=tuple(model_config.image_size), spec_frames=model_config.spectrogram_shape[0],
                     front_end=front_end, **overrides)
        config.check_model(model_config)
        return config

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["front_end"] = self.front_end.to_dict()
        return json.loads(json.dumps(d))  # tuples -> lists

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "data config") -> "DataConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown DataConfig field(s) {unknown}; known: {sorted(names)}")
        augment = d.get("augment", {})
        if isinstance(augment, Mapping):
            known = {f.name for f in dataclasses.fields(AugmentConfig)}
            bad = sorted(set(augment) - known)
            if bad:
                raise ConfigError(f"{source}: unknown AugmentConfig field(s) {bad}; known: {sorted(known)}")
        try:
            return cls(**dict(d))
        except (ConfigError, ValueError, TypeError) as e:
            raise ConfigError(f"{source}: {e}") from None

    def save_file(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def save(self, directory: str | Path) -> Path:
        """Write `directory/preprocessor_config.json`."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        return self.save_file(Path(directory) / PREPROCESSOR_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "DataConfig":
        """Read `directory/preprocessor_config.json`."""
        path = Path(directory) / PREPROCESSOR_NAME
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file (a model directory written by `mbt train` or `mbt convert` "
                              "holds it; for another, write one with DataConfig.for_model(model.config).save(dir))"
                              ) from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, source=str(path))


def load_pretrained(directory: str | Path, map_location: str | Any = "cpu", require_data_config: bool = True):
    """A model directory -> (model, data config): `MBT.from_pretrained` (eval mode, on `map_location`) and its
    preprocessor_config.json, checked against the model. Without that file the data config is an error naming it
    (`require_data_config`) or None. This is what `mbt eval`, `mbt predict`, `mbt explain`, `mbt export` and the
    demo load.

        model, data_config = load_pretrained("runs/as/model")
    """
    from ..models.mbt import MBT

    model = MBT.from_pretrained(directory, map_location=map_location)
    if not require_data_config and not (Path(directory) / PREPROCESSOR_NAME).is_file():
        return model, None
    data_config = DataConfig.from_pretrained(directory)
    try:
        data_config.check_model(model.config)
    except ConfigError as e:
        raise ConfigError(f"{Path(directory) / PREPROCESSOR_NAME}: {e}") from None
    return model, data_config
