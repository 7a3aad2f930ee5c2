"""Augmentation and normalisation, as in the official DMVR pipeline (reference D.3, D.6, D.7).

Video (`VideoTransform`): frames are resized by FFmpeg while decoding (shorter side to `min_resize`, times the
scale-jitter factors in training), then
  train: random crop (one offset for all frames) ->
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
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .decode import shorter_side_size

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale


# ---------------------------------------------------------------------------------------------------- colour
def rgb_to_hsv(x: Tensor) -> Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of a turn). A reference for the fast
    closed forms below, and for users."""
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


def adjust_saturation_(x: Tensor, factor: float) -> Tensor:
    """tf.image.adjust_saturation in place on x (3, ...): S <- clip(S * factor, 0, 1) with H and V kept.

    In HSV each channel is V - S * V * w(H), so scaling S is a per-pixel blend towards V = max(r, g, b):
    x <- V + g (x - V) with g = min(factor, 1 / S) (the clip at S = 1); pixels with V <= 0 have S = 0 in TF and
    become V. Exact, and far cheaper than converting to HSV and back.
    """
    mx, mn = x.amax(0), x.amin(0)
    g = torch.minimum(torch.full_like(mx, factor), mx / (mx - mn).clamp_min(1e-12))
    g = torch.where(mx > 0, g, torch.zeros_like(g))
    return x.sub_(mx).mul_(g).add_(mx)


def adjust_hue_(x: Tensor, delta: float) -> Tensor:
    """tf.image.adjust_hue in place on x (3, ...): H <- (H + delta) mod 1 with S and V kept, through the closed
    form of HSV -> RGB: channel n = V - V S clamp(min(k, 4 - k), 0, 1), k = (n + 6 H) mod 6, n = 5, 3, 1."""
    r, g, b = x[0], x[1], x[2]
    mx, mn = x.amax(0), x.amin(0)
    d = mx - mn  # = V * S
    inv = d.clamp_min(1e-12).reciprocal_()
    h6 = torch.where(mx == r, (g - b).mul_(inv),
                     torch.where(mx == g, (b - r).mul_(inv).add_(2.0), (r - g).mul_(inv).add_(4.0)))
    h6 = torch.where(d > 0, h6, torch.zeros_like(h6))
    h6 = torch.remainder(h6.add_(6.0 * delta), 6.0)  # in [0, 6)
    d = torch.where(mx > 0, d, torch.zeros_like(d))  # TF: S = 0 where V <= 0
    for c, n in enumerate((5.0, 3.0, 1.0)):
        k = h6 + n  # in [n, n + 6): one wrap at most
        k = torch.where(k >= 6.0, k - 6.0, k)
        torch.sub(mx, d * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0), out=x[c])
    return x


def color_augment_(x: Tensor, brightness: float, saturation: float, contrast: float, hue: float) -> Tensor:
    """tf.image's adjust_brightness, adjust_saturation, adjust_contrast, adjust_hue in that order, then clip to
    [0, 1] (DMVR's colour augmentation; TF clips only at the end), in place. x: (3, T, H, W) in [0, 1]; the
    factors are already drawn."""
    x.add_(brightness)
    if saturation != 1.0:
        adjust_saturation_(x, saturation)
    mean = x.mean(dim=(-2, -1), keepdim=True)  # per frame and channel, as tf.image.adjust_contrast
    x.mul_(contrast).add_(mean * (1.0 - contrast))
    if hue != 0.0:
        adjust_hue_(x, hue)
    return x.clamp_(0.0, 1.0)


def color_augment(x: Tensor, brightness: float, saturation: float, contrast: float, hue: float) -> Tensor:
    """`color_augment_` on a copy of x (T, 3, H, W)."""
    return color_augment_(x.transpose(0, 1).clone(), brightness, saturation, contrast, hue).transpose(0, 1)


def grayscale_(x: Tensor) -> Tensor:
    """In place on x (3, ...): every channel becomes the luma (tf.image.rgb_to_grayscale, tiled to 3)."""
    luma = x[0] * GRAY_WEIGHTS[0] + x[1] * GRAY_WEIGHTS[1] + x[2] * GRAY_WEIGHTS[2]
    x.copy_(luma.expand_as(x))
    return x


def grayscale(x: Tensor) -> Tensor:
    """(T, 3, H, W) -> the same shape, each channel the luma."""
    return grayscale_(x.transpose(0, 1).clone()).transpose(0, 1)


# ---------------------------------------------------------------------------------------------------- video
@dataclass(frozen=True)
class VideoPlan:
    """The random choices for one clip, drawn before decoding so FFmpeg can resize frames straight to `size`."""

    size: tuple[int, int]  # (height, width) to decode to
    box: tuple[int, int, int, int]  # crop (top, left, height, width) in the decoded frames
    flip: bool = False
    color: tuple[float, float, float, float] | None = None  # brightness, saturation, contrast, hue
    drop: bool = False  # colour drop (grayscale)


class VideoTransform:
    """Frames -> float (3, T, crop_h, crop_w) in [-1, 1], with the train augmentations.

    Use in two steps, so the expensive resize happens in FFmpeg while decoding:
      plan = transform.plan(height, width, rng)   # decode size and every random choice
      frames = reader.frames(times, size=plan.size, crop=plan.box)   # uint8 (T, crop_h, crop_w, 3)
      video = transform.apply(frames, plan)
    `transform(frames, rng)` does both on frames already in memory (resized with torch).

    train: the shorter side resized to `min_resize` and then by independent height and width factors from
      `scale_jitter`, a random crop, a horizontal flip with p 0.5, colour augmentation with p
      `color_augment_prob`, colour drop with p `color_drop_prob`.
    eval: the shorter side resized to `min_resize`, a central crop.
    """

    CHUNK = 4  # frames processed together: about a megabyte per channel at 224 px, so the work stays in cache

    def __init__(self, crop_size: tuple[int, int], train: bool, augment=None, min_resize: int | None = None) -> None:
        self.crop = tuple(crop_size)
        self.train = train and augment is not None
        self.aug = augment
        self.min_resize = min_resize

    def plan(self, height: int, width: int, rng: np.random.Generator | None = None) -> VideoPlan:
        ch, cw = self.crop
        h, w = (height, width) if self.min_resize is None else shorter_side_size(height, width, self.min_resize)
        if not self.train:
            h, w = max(h, ch), max(w, cw)  # too small for the crop (min_resize < crop): upscale
            return VideoPlan((h, w), ((h - ch) // 2, (w - cw) // 2, ch, cw))
        a, rng = self.aug, rng or np.random.default_rng()
        if a.scale_jitter is not None:
            sh, sw = rng.uniform(*a.scale_jitter, size=2)
            h, w = int(h * sh), int(w * sw)
        h, w = max(h, ch), max(w, cw)
        box = (int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw)
        flip = bool(a.flip and rng.random() < 0.5)
        color = None
        if rng.random() < a.color_augment_prob:
            color = (rng.uniform(-a.brightness, a.brightness), rng.uniform(*a.saturation),
                     rng.uniform(*a.contrast), rng.uniform(-a.hue, a.hue))
        drop = bool(rng.random() < a.color_drop_prob)
        return VideoPlan((h, w), box, flip, color, drop)

    def apply(self, frames: np.ndarray, plan: VideoPlan) -> Tensor:
        """uint8 frames (T, crop_h, crop_w, 3), already resized to plan.size and cropped to plan.box."""
        if plan.flip:
            frames = frames[:, :, ::-1]
        u8 = torch.from_numpy(np.ascontiguousarray(frames))
        out = torch.empty((3, *u8.shape[:3]), dtype=torch.float32)  # (3, T, H, W)
        # A few frames at a time, from uint8 to the final values, while they are in cache.
        for t0 in range(0, u8.shape[0], self.CHUNK):
            v = out[:, t0:t0 + self.CHUNK]
            v.copy_(u8[t0:t0 + self.CHUNK].permute(3, 0, 1, 2))
            if plan.color is None and not plan.drop:
                v.div_(127.5).sub_(1.0)  # x * 2 / 255 - 1
                continue
            v.div_(255.0)
            if plan.color is not None:
                color_augment_(v, *plan.color)
            if plan.drop:
                grayscale_(v)
            v.mul_(2.0).sub_(1.0)
        return out

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> Tensor:
        """Both steps on uint8 frames (T, H, W, 3) in memory; the resize (if any) is done with torch."""
        t, h, w, _ = frames.shape
        plan = self.plan(h, w, rng)
        if plan.size != (h, w):
            x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=plan.size, mode="bilinear", align_corners=False, antialias=False)
            frames = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        y, x0, ch, cw = plan.box
        return self.apply(frames[:, y:y + ch, x0:x0 + cw], plan)


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
    if isinstance(out.get("missing"), Mapping) and out["missing"]:
        out["missing"] = mixup_missing(out["missing"])
    return out, lam


def mixup_missing(missing: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The 'missing' flags {m: (B,) bool} of a batch mixed with itself reversed: a stream is missing from a mixed
    example when either of its two clips lacks it (so a stand-in, silence or blank frames, is never trained on as
    content); an example that would then have no stream keeps its own clip's flags."""
    mixed = {m: f | f.flip(0) for m, f in missing.items()}
    if len(mixed) > 1:
        nothing = torch.stack(list(mixed.values())).all(dim=0)
        mixed = {m: torch.where(nothing, missing[m], f) for m, f in mixed.items()}
    return mixed


def modality_dropout(missing: Mapping[str, Tensor], probs: Mapping[str, float], batch: int,
                     rng: np.random.Generator) -> dict[str, Tensor]:
    """Per example, drop at most one stream: stream m with probability probs[m] (the probabilities are of disjoint
    events, so they sum to at most 1), drawn with one uniform number per example from `rng`. A draw that would take
    an example's last stream is not applied. Returns the new flags {m: (B,) bool} (True: treated as missing) for
    every modality of `probs` and `missing`."""
    modalities = sorted(set(probs) | set(missing))
    device = next(iter(missing.values())).device if missing else None
    flags = {m: (missing[m].clone() if m in missing else torch.zeros(batch, dtype=torch.bool, device=device))
             for m in modalities}
    u = torch.from_numpy(rng.random(batch)).to(device)
    low = 0.0
    for m in modalities:
        p = float(probs.get(m, 0.0))
        if p <= 0:
            continue
        hit = (u >= low) & (u < low + p)
        low += p
        others_left = torch.stack([~flags[o] for o in modalities if o != m]).any(dim=0) if len(modalities) > 1 \
            else torch.zeros(batch, dtype=torch.bool, device=device)
        flags[m] = flags[m] | (hit & others_left)
    return flags
