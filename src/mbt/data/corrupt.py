"""Test-time corruption of one stream at a given strength, for robustness evaluation (`mbt eval --corrupt`,
`mbt eval --robustness`).

    audio noise      white Gaussian noise added to the waveform at `strength` dB SNR (signal power over noise power,
                     measured on each clip's window; a silent window stays silent)
    video noise      Gaussian noise of standard deviation `strength` added to the frames in [-1, 1], then clipped
    video blur       a Gaussian blur of `strength` pixels (standard deviation, on the model's input crop), per frame
    video occlusion  a box of the frame's shape covering `strength` of its area set to grey (0), at one random place
                     per clip (the same in every frame)

Every draw is seeded from the clip's index and its test clip number, so a corrupted evaluation is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

KINDS = {"audio": ("noise",), "video": ("noise", "blur", "occlusion")}
STRENGTH_UNITS = {("audio", "noise"): "dB SNR", ("video", "noise"): "std", ("video", "blur"): "px",
                  ("video", "occlusion"): "of the area"}
# The three strengths `mbt eval --robustness` uses for each corruption, mild to severe.
ROBUSTNESS_STRENGTHS = {("audio", "noise"): (20.0, 10.0, 0.0), ("video", "noise"): (0.2, 0.5, 1.0),
                        ("video", "blur"): (1.0, 2.0, 4.0), ("video", "occlusion"): (0.25, 0.5, 0.75)}


@dataclass(frozen=True)
class Corruption:
    """One stream corrupted one way at one strength (see the module docstring for the units)."""

    stream: str  # 'audio' | 'video'
    kind: str  # 'noise' | 'blur' | 'occlusion'
    strength: float

    def __post_init__(self) -> None:
        if self.stream not in KINDS:
            raise ConfigError(f"corruption stream {self.stream!r}; allowed: {sorted(KINDS)}")
        if self.kind not in KINDS[self.stream]:
            raise ConfigError(f"corruption {self.stream}:{self.kind}; allowed: "
                              + ", ".join(f"{s}:{k}" for s, ks in KINDS.items() for k in ks))
        signed = (self.stream, self.kind) == ("audio", "noise")  # an SNR in dB may be negative
        s = float(self.strength)
        if not math.isfinite(s) or (s < 0 and not signed):
            raise ConfigError(f"corruption {self.name}: the strength must be a finite number"
                              + ("" if signed else " >= 0"))
        if self.kind == "occlusion" and s > 1:
            raise ConfigError(f"corruption {self.name}: an occlusion covers a share of the frame, at most 1")

    @classmethod
    def parse(cls, text: str) -> "Corruption":
        """'audio:noise:10' -> Corruption('audio', 'noise', 10.0)."""
        parts = text.split(":")
        if len(parts) != 3:
            raise ConfigError(f"--corrupt {text!r}: expected STREAM:KIND:STRENGTH, e.g. audio:noise:10 (dB SNR), "
                              "video:noise:0.5, video:blur:2, video:occlusion:0.5")
        try:
            strength = float(parts[2])
        except ValueError:
            raise ConfigError(f"--corrupt {text!r}: the strength {parts[2]!r} is not a number") from None
        return cls(parts[0], parts[1], strength)

    @property
    def name(self) -> str:
        return f"{self.stream}:{self.kind}:{self.strength:g}"

    def describe(self) -> str:
        return f"{self.stream} {self.kind} {self.strength:g} {STRENGTH_UNITS[(self.stream, self.kind)]}"

    def rng(self, index: int, clip: int) -> np.random.Generator:
        return np.random.default_rng([index, clip, 7919])

    def waveform(self, wave: Tensor, index: int, clip: int) -> Tensor:
        """(samples,) float waveform -> the same with noise at the SNR (audio corruptions only)."""
        if self.stream != "audio":
            return wave
        power = float(wave.double().pow(2).mean())
        if power == 0.0:
            return wave
        noise = torch.from_numpy(self.rng(index, clip).standard_normal(wave.shape[0]))
        noise = noise * math.sqrt(power / 10 ** (self.strength / 10) / float(noise.pow(2).mean()))
        return (wave.double() + noise).to(wave.dtype)

    def frames(self, video: Tensor, index: int, clip: int) -> Tensor:
        """(3, T, H, W) frames in [-1, 1] -> corrupted frames (video corruptions only)."""
        if self.stream != "video" or self.strength == 0:
            return video
        rng = self.rng(index, clip)
        if self.kind == "noise":
            noise = torch.from_numpy(rng.standard_normal(video.shape).astype(np.float32))
            return (video + self.strength * noise).clamp_(-1.0, 1.0)
        if self.kind == "blur":
            return gaussian_blur(video, self.strength)
        h, w = video.shape[-2:]  # occlusion: a box of the frame's shape and the given share of its area
        bh, bw = round(h * math.sqrt(self.strength)), round(w * math.sqrt(self.strength))
        top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        out = video.clone()
        out[..., top:top + bh, left:left + bw] = 0.0
        return out


def gaussian_blur(video: Tensor, sigma: float) -> Tensor:
    """(..., H, W) -> each image blurred by a separable Gaussian of `sigma` pixels (kernel radius 3 sigma, edges
    reflected)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(video.dtype)
    shape = video.shape
    img = video.reshape(-1, 1, *shape[-2:])
    pad_h, pad_w = min(radius, shape[-2] - 1), min(radius, shape[-1] - 1)
    kw, kh = k[radius - pad_w:radius + pad_w + 1], k[radius - pad_h:radius + pad_h + 1]  # cut for tiny images
    img = F.pad(img, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w else img
    img = F.conv2d(img, (kw / kw.sum()).view(1, 1, 1, -1))
    img = F.pad(img, (0, 0, pad_h, pad_h), mode="reflect") if pad_h else img
    img = F.conv2d(img, (kh / kh.sum()).view(1, 1, -1, 1))
    return img.reshape(shape)


__all__ = ["Corruption", "KINDS", "ROBUSTNESS_STRENGTHS", "gaussian_blur"]
