"""Where in a clip the model's windows are taken: the official DMVR/Scenic rules (reference D.2).

Each modality is a sequence of units: rgb frames at the target frame rate (25 fps) and spectrogram frames
(100 per second). A window is `steps` units at `stride`, starting at an offset:
  * train: a random rgb offset in [0, max(len_rgb - (steps - 1) * stride, 1)); the spectrogram offset is taken at
    the same proportion of its own length, round(p * len_spec) with p = offset / len_rgb (the official
    `sync_random_state`): the same moment of the clip when both streams span it;
  * validation: the middle window of each modality, offset max(0, (len - steps * stride) // 2);
  * test: `num_clips` windows per modality at offsets linspace(0, max(0, len - steps * stride), num_clips), cast
    to int; window i of one modality is paired with window i of the other.
Media shorter than a window wraps around to the start of the clip (the official rule): unit k of a window is
(offset + k * stride) mod len.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")


def num_units(duration: float, rate: float) -> int:
    """Units of a stream `duration` seconds long at `rate` per second, at least 1 (a one-frame video)."""
    return max(1, int(np.floor(duration * rate + 1e-6)))


def train_offsets(len_rgb: int, len_spec: int | None, steps: int, stride: int,
                  rng: np.random.Generator) -> tuple[int, int | None]:
    """One random rgb offset and the spectrogram offset at the same proportion of its length."""
    offset = int(rng.integers(0, max(len_rgb - (steps - 1) * stride, 1)))
    if len_spec is None:
        return offset, None
    return offset, int(round(offset / len_rgb * len_spec))


def random_offset(length: int, steps: int, stride: int, rng: np.random.Generator) -> int:
    """A random offset for a modality on its own (no rgb to sync with)."""
    return int(rng.integers(0, max(length - (steps - 1) * stride, 1)))


def middle_offset(length: int, steps: int, stride: int) -> int:
    return max(0, (length - steps * stride) // 2)


def multi_clip_offsets(length: int, steps: int, stride: int, num_clips: int) -> list[int]:
    return [int(x) for x in np.linspace(0, max(0, length - steps * stride), num_clips)]


def window(offset: int, steps: int, stride: int, length: int) -> np.ndarray:
    """Unit indices of a window, wrapped around the clip: (offset + k * stride) mod length, k < steps."""
    return (offset + stride * np.arange(steps)) % length


def sample_offsets(split: str, len_rgb: int | None, len_spec: int | None, rgb_steps: int, rgb_stride: int,
                   spec_steps: int, num_clips: int, rng: np.random.Generator | None
                   ) -> list[tuple[int | None, int | None]]:
    """(rgb offset, spectrogram offset) pairs for one clip: one pair for train and val, `num_clips` for test.
    A modality whose length is None (absent) gets None."""
    if split == "train":
        assert rng is not None
        if len_rgb is not None:
            return [train_offsets(len_rgb, len_spec, rgb_steps, rgb_stride, rng)]
        return [(None, random_offset(len_spec, spec_steps, 1, rng))]
    if split == "val":
        return [(None if len_rgb is None else middle_offset(len_rgb, rgb_steps, rgb_stride),
                 None if len_spec is None else middle_offset(len_spec, spec_steps, 1))]
    if split == "test":
        rgb = [None] * num_clips if len_rgb is None else multi_clip_offsets(len_rgb, rgb_steps, rgb_stride, num_clips)
        spec = [None] * num_clips if len_spec is None else multi_clip_offsets(len_spec, spec_steps, 1, num_clips)
        return list(zip(rgb, spec))
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
