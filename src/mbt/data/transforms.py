"""Augmentation and normalisation, as in the official DMVR pipeline (reference D.3, D.6, D.7).

Video (`VideoTransform`), on frames already resized by FFmpeg so their shorter side is `min_resize`:
  train: scale jitter (independent height and width factors) -> random crop (one offset for all frames) ->
         horizontal flip (p 0.5) -> colour augmentation (p `color_augment_prob`: brightness, saturation, contrast,
         hue, one random value each for the whole clip, in [0, 1], then clipped) -> colour drop (p
         `color_drop_prob`: grayscale copied to 3 channels) -> [-1, 1];
  eval:  central crop -> [-1, 1].
Spectrogram: `spec_augment`, frequency and time masks set to 0 (the dataset mean after normalisation), per example.
Batch: `mixup`, one lambda ~ Beta(alpha, alpha) for every modality and the labels; example i is mixed with example
B-1-i (the batch reversed), as the official train step does.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale


# ---------------------------------------------------------------------------------------------------- colour
def rgb_to_hsv(x: Tensor) -> Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = x.unbind(-3)
    maxc, _ = x.max(-3)
    minc, _ = x.min(-3)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], dim=-3)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """Inverse of `rgb_to_hsv`."""
    h, s, v = x.unbind(-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    r = torch.stack([v, q, p, p, t, v], -3).gather(-3, i.unsqueeze(-3)).squeeze(-3)
    g = torch.stack([t, v, v, q, p, p], -3).gather(-3, i.unsqueeze(-3)).squeeze(-3)
    b = torch.stack([p, p, t, v, v, q], -3).gather(-3, i.unsqueeze(-3)).squeeze(-3)
    return torch.stack([r, g, b], dim=-3)


def color_augment(x: Tensor, brightness: float, saturation: float, contrast: float, hue: float) -> Tensor:
    """tf.image's adjust_brightness, adjust_saturation, adjust_contrast, adjust_hue in that order, then clip.
    x: (T, 3, H, W) in [0, 1]; the factors are the already drawn random values."""
    x = x + brightness
    if saturation != 1.0:  # TF's HSV conversions accept values outside [0, 1]; clipping happens only at the end
        hsv = rgb_to_hsv(x)
        x = hsv_to_rgb(torch.stack([hsv[:, 0], (hsv[:, 1] * saturation).clamp(0, 1), hsv[:, 2]], dim=1))
    mean = x.mean(dim=(-2, -1), keepdim=True)  # per frame and channel, as tf.image.adjust_contrast
    x = (x - mean) * contrast + mean
    if hue != 0.0:
        hsv = rgb_to_hsv(x)
        x = hsv_to_rgb(torch.stack([(hsv[:, 0] + hue) % 1.0, hsv[:, 1], hsv[:, 2]], dim=1))
    return x.clamp(0, 1)


def grayscale(x: Tensor) -> Tensor:
    """(T, 3, H, W) -> the same shape, each channel the luma."""
    w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True).expand_as(x).contiguous()


# ---------------------------------------------------------------------------------------------------- video
class VideoTransform:
    """uint8 frames (T, H, W, 3) -> float (3, T, crop_h, crop_w) in [-1, 1], with the train augmentations.

    Args:
      crop_size: (height, width) of the output.
      train: augment (scale jitter, random crop, flip, colour) if True; central crop only if False.
      augment: an `AugmentConfig` (see mbt.data.config) with scale_jitter, flip, color_augment_prob,
        color_drop_prob, brightness, saturation, contrast, hue.
    """

    def __init__(self, crop_size: tuple[int, int], train: bool, augment=None) -> None:
        self.crop = tuple(crop_size)
        self.train = train
        self.aug = augment

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> Tensor:
        ch, cw = self.crop
        t, h, w, _ = frames.shape
        if not self.train or self.aug is None:
            frames = _pad_to(frames, ch, cw)
            y, x = (frames.shape[1] - ch) // 2, (frames.shape[2] - cw) // 2
            out = torch.from_numpy(np.ascontiguousarray(frames[:, y:y + ch, x:x + cw])).permute(3, 0, 1, 2)
            return out.float().div_(127.5).sub_(1.0)  # x * 2 / 255 - 1
        a, rng = self.aug, rng or np.random.default_rng()
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, H, W) in [0, 1]
        if a.scale_jitter is not None:
            lo, hi = a.scale_jitter
            sh, sw = rng.uniform(lo, hi, size=2)
            size = (max(ch, int(h * sh)), max(cw, int(w * sw)))
        else:
            size = (max(ch, h), max(cw, w))
        if size != (h, w):
            video = F.interpolate(video, size=size, mode="bilinear", align_corners=False, antialias=False)
        y = int(rng.integers(0, size[0] - ch + 1))
        x = int(rng.integers(0, size[1] - cw + 1))
        video = video[:, :, y:y + ch, x:x + cw]
        if a.flip and rng.random() < 0.5:
            video = video.flip(-1)
        if rng.random() < a.color_augment_prob:
            video = color_augment(
                video, brightness=rng.uniform(-a.brightness, a.brightness),
                saturation=rng.uniform(*a.saturation), contrast=rng.uniform(*a.contrast),
                hue=rng.uniform(-a.hue, a.hue))
        if rng.random() < a.color_drop_prob:
            video = grayscale(video)
        return video.mul(2.0).sub_(1.0).permute(1, 0, 2, 3).contiguous()  # (3, T, H, W) in [-1, 1]


def _pad_to(frames: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """Frames smaller than the crop (only with min_resize < crop) are padded with black around the centre."""
    t, h, w, c = frames.shape
    if h >= ch and w >= cw:
        return frames
    out = np.zeros((t, max(h, ch), max(w, cw), c), frames.dtype)
    y, x = (out.shape[1] - h) // 2, (out.shape[2] - w) // 2
    out[:, y:y + h, x:x + w] = frames
    return out


# ---------------------------------------------------------------------------------------------------- audio
def spec_augment(spec: Tensor, freq_mask_count: int, freq_mask_max_bins: int, time_mask_count: int,
                 time_mask_max_frames: int, generator: torch.Generator | None = None) -> Tensor:
    """SpecAugment masks on (..., time, mel), independently for each example over the leading dims.

    Each mask has a width floor(max * U(0, 1)) (0 .. max - 1) and a start uniform over the positions where it fits;
    masked values are set to 0 (the mean, once features are normalised). Returns a new tensor.
    """
    if (freq_mask_count <= 0 or freq_mask_max_bins <= 0) and (time_mask_count <= 0 or time_mask_max_frames <= 0):
        return spec
    *lead, n_time, n_mel = spec.shape
    examples = math.prod(lead)
    keep = torch.ones(examples, n_time, n_mel, dtype=torch.bool, device=spec.device)
    for count, max_width, axis, size in ((freq_mask_count, freq_mask_max_bins, 2, n_mel),
                                         (time_mask_count, time_mask_max_frames, 1, n_time)):
        if count <= 0 or max_width <= 0:
            continue
        u = torch.rand(2, examples, count, generator=generator, device="cpu").to(spec.device)
        width = torch.floor(u[0] * min(max_width, size)).long()  # (E, count)
        start = torch.floor(u[1] * (size - width + 1).float()).long()
        pos = torch.arange(size, device=spec.device).view(1, 1, size)
        masked = ((pos >= start.unsqueeze(-1)) & (pos < (start + width).unsqueeze(-1))).any(dim=1)  # (E, size)
        keep &= ~(masked.unsqueeze(1) if axis == 2 else masked.unsqueeze(2))
    return spec * keep.view(*lead, n_time, n_mel).to(spec.dtype)


# ---------------------------------------------------------------------------------------------------- batch
MIXED_KEYS = ("rgb", "spectrogram", "label")


def mixup(batch: Mapping[str, Tensor], alpha: float, rng: np.random.Generator | None = None
          ) -> tuple[dict, float]:
    """Mix every example with the batch reversed, with one lambda ~ Beta(alpha, alpha) shared by the rgb frames,
    the spectrogram and the labels (the official train step). Other keys are passed through. Returns the new batch
    and lambda (1.0, unchanged, if alpha <= 0)."""
    out = dict(batch)
    if alpha <= 0:
        return out, 1.0
    lam = float((rng or np.random.default_rng()).beta(alpha, alpha))
    for key in MIXED_KEYS:
        if key in out and isinstance(out[key], Tensor):
            v = out[key]
            out[key] = lam * v + (1.0 - lam) * v.flip(0)
    return out, lam
