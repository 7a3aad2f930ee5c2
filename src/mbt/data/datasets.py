"""`VideoDataset`: annotation records -> model-ready tensors; `collate` -> the batch dict `mbt.MBT` takes.

A sample (train and val: one window per modality; test: `num_test_clips` windows, paired across modalities):
    'rgb':          (3, T, H, W) float in [-1, 1]       test: (N, 3, T, H, W)
    'spectrogram':  (1, time, mel) normalised features  test: (N, 1, time, mel)
    'label':        (num_classes,) float: multi-hot, one-hot, or one-hot per head
    'missing':      {modality: bool}: the file has no such stream (zeros / silence stand in)
    'index', 'path'
`collate` stacks samples into {'rgb': (B, 3, T, H, W), 'spectrogram': (B, 1, time, mel), 'label': (B, C),
'missing': {m: (B,) bool}, 'index': (B,), 'path': [...], 'skipped': [Skipped, ...]}.

Bad files: with on_error='skip' (the default for training) a file that cannot be used becomes a `Skipped` record
that `collate` drops and lists in 'skipped'; `SkipReport` counts them over an epoch and prints a summary. With
on_error='raise' (the default for val/test) the MediaError, naming the file and the reason, propagates.
"""

from __future__ import annotations

import collections
import csv
import ctypes
import gc
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..models.config import STREAM
from .annotations import Annotations, Record
from .audio import AudioFrontEnd
from .corrupt import Corruption
from .config import DataConfig
from .decode import MediaError, MediaReader
from .sampling import SPLITS, num_units, sample_offsets, window
from .transforms import VideoTransform, spec_augment

# A file shorter than the annotated clip end by more than this is taken to be the clip itself (already cut).
CUT_TOLERANCE = 0.5  # seconds
ON_ERROR = ("skip", "raise")


@dataclass(frozen=True)
class Skipped:
    """A sample that could not be loaded (on_error='skip')."""

    index: int
    path: str
    reason: str


def clip_bounds(record: Record, duration: float) -> tuple[float, float]:
    """[start, end) seconds of a record's clip in its file of `duration` seconds.

    No bounds: the whole file. Bounds inside the file: those bounds. A file that ends before the annotated end
    (by more than CUT_TOLERANCE) is the clip already cut out of the source video: the whole file.
    """
    if record.start is None and record.end is None:
        return 0.0, duration
    start = record.start or 0.0
    end = record.end if record.end is not None else duration
    if duration < end - CUT_TOLERANCE:
        return 0.0, duration
    return start, min(end, duration)


class VideoDataset(Dataset):
    """Annotated video files -> samples for MBT.

    Args:
      annotations: from `mbt.data.read_annotations`.
      config: the DataConfig (decoding, sampling, front end, augmentation).
      split: 'train' (random window, augmentation), 'val' (middle window) or 'test' (num_test_clips windows).
      on_error: 'skip' or 'raise' for unusable files (default: skip when training, raise otherwise).
      seed: randomness of training samples depends only on (seed, epoch, index): reproducible with any number of
        workers. Call `set_epoch` each epoch.
      decode_threads: FFmpeg threads per video decoder; None: FFmpeg's choice in the main process and 1 inside
        DataLoader workers, which already run in parallel.
      cache: keep what is decoded from each file in memory and reuse it (small datasets read many times, such as
        AV-Digits: decoding is then paid once). Frames are kept per request (the same windows and sizes come back
        when the crop does not vary); audio as the whole clip, from which windows are cut by sample. Only the
        process that reads keeps the cache: use it with DataLoader num_workers=0. Memory: about the decoded size
        of every clip (uint8 frames, float32 audio). A dict instead of True is the store itself, keyed by file
        path (None or False: no cache): datasets over the same files (a test set read with and without a modality, several runs in one
        process) then share what was decoded.
      corruption: an `mbt.data.corrupt.Corruption` applied to every clip's frames or waveform (robustness
        evaluation); None: none.
    """

    def __init__(self, annotations: Annotations, config: DataConfig, split: str = "train",
                 on_error: str | None = None, seed: int = 0, decode_threads: int | None = None,
                 cache: bool | dict | None = None, corruption: Corruption | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        on_error = on_error or ("skip" if split == "train" else "raise")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.annotations, self.config, self.split, self.on_error = annotations, config, split, on_error
        self.seed, self.epoch, self.decode_threads = seed, 0, decode_threads
        self.corruption = corruption
        self.cache: dict[str, _MemoReader] | None = cache if isinstance(cache, dict) else ({} if cache else None)
        self.front_end = AudioFrontEnd(config.front_end)
        self.video_transform = VideoTransform(config.crop_size, train=split == "train", augment=config.augment,
                                              min_resize=config.min_resize)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.annotations.records)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        record = self.annotations.records[index]
        try:
            return self.load(index)
        except MediaError as e:
            if self.on_error == "skip":
                return Skipped(index, record.path, e.reason)
            raise
        except Exception as e:  # anything unforeseen in one file must not end a long run either
            if self.on_error == "skip":
                return Skipped(index, record.path, f"unexpected {type(e).__name__}: {e}")
            raise MediaError(record.path, f"unexpected {type(e).__name__}: {e}") from e

    # ------------------------------------------------------------------ loading
    def load(self, index: int) -> dict[str, Any]:
        cfg, record = self.config, self.annotations.records[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.split == "train" else None
        threads = self.decode_threads
        if threads is None:
            threads = 1 if torch.utils.data.get_worker_info() is not None else 0
        if self.cache is not None:
            if record.path not in self.cache:
                self.cache[record.path] = _MemoReader(record.path, threads)
            reader: MediaReader | _MemoReader = self.cache[record.path]
        else:
            reader = MediaReader(record.path, threads=threads)
        with reader:
            info = reader.info
            start, end = clip_bounds(record, info.duration)
            has = {"rgb": info.video is not None, "spectrogram": info.audio is not None}
            wanted = list(cfg.modalities)
            if not any(has[m] for m in wanted):
                raise MediaError(record.path, f"none of the configured streams ({', '.join(STREAM[m] for m in wanted)})"
                                              " is in the file")
            for m in wanted:
                if not has[m] and cfg.missing_stream == "error":
                    raise MediaError(record.path, f"no {STREAM[m]} stream")
            len_rgb = len_spec = None
            if "rgb" in wanted and has["rgb"]:
                v_end = min(end, info.video.start + info.video.duration)
                len_rgb = num_units(v_end - start, cfg.fps)
            if "spectrogram" in wanted and has["spectrogram"]:
                a_end = min(end, info.audio.start + info.audio.duration)
                len_spec = num_units(a_end - start, cfg.spec_rate)
            offsets = sample_offsets(self.split, len_rgb, len_spec, cfg.num_frames, cfg.stride, cfg.spec_frames,
                                     cfg.num_test_clips, rng)
            rgb, spec = [], []
            bad = self.corruption
            for clip, (o_rgb, o_spec) in enumerate(offsets):
                if "rgb" in wanted:
                    frames = (self._rgb(reader, start, o_rgb, len_rgb, rng) if o_rgb is not None
                              else torch.zeros(3, cfg.num_frames, *cfg.crop_size))
                    rgb.append(bad.frames(frames, index, clip) if bad and o_rgb is not None else frames)
                if "spectrogram" in wanted:
                    wave = (self._waveform(reader, start, o_spec, len_spec) if o_spec is not None
                            else torch.zeros(cfg.window_samples()))
                    if bad and o_spec is not None:
                        wave = bad.waveform(wave, index, clip)
                    spec.append(self._features(wave, rng, record.path))
        sample: dict[str, Any] = {}
        stack = (lambda xs: torch.stack(xs)) if self.split == "test" else (lambda xs: xs[0])
        if rgb:
            sample["rgb"] = stack(rgb)
        if spec:
            sample["spectrogram"] = stack(spec)
        sample["label"] = torch.from_numpy(self.annotations.label_vector(record))
        sample["missing"] = {m: not has[m] for m in wanted}
        sample["index"], sample["path"] = index, record.path
        return sample

    def _rgb(self, reader: MediaReader, start: float, offset: int, length: int,
             rng: np.random.Generator | None) -> torch.Tensor:
        cfg = self.config
        idx = window(offset, cfg.num_frames, cfg.stride, length)
        # Every random choice first: FFmpeg then resizes straight to the (jittered) size and only the crop is kept.
        plan = self.video_transform.plan(reader.info.video.height, reader.info.video.width, rng)
        frames = reader.frames(start + idx / cfg.fps, size=plan.size, crop=plan.box)  # uint8 (T, crop_h, crop_w, 3)
        return self.video_transform.apply(frames, plan)  # (3, T, crop_h, crop_w) in [-1, 1]

    def _waveform(self, reader: MediaReader, start: float, offset: int, length: int) -> torch.Tensor:
        """The samples under spectrogram frames [offset, offset + spec_frames), wrapping at the clip end.

        The clip's audio has `length` spectrogram frames, i.e. period = length * hop samples. A window that runs
        past the end continues from the clip start (the official wrap-around rule, applied to the waveform: only
        the frames that straddle the seam differ from wrapping the finished spectrogram).
        """
        fe = self.config.front_end
        sr = fe.sample_rate
        hop = fe.geometry.frame_shift
        need, s0, period = self.config.window_samples(), offset * hop, length * hop
        at = lambda a, b: reader.audio(start + a / sr, start + b / sr, sr)  # noqa: E731
        if s0 + need <= period:
            wave = at(s0, s0 + need)
        elif need <= period:
            wave = np.concatenate([at(s0, period), at(0, s0 + need - period)])
        else:  # the clip is shorter than the window: tile it
            wave = np.take(at(0, period), np.arange(s0, s0 + need) % period)
        return torch.from_numpy(wave)

    def _features(self, wave: torch.Tensor, rng: np.random.Generator | None, path: str | Path) -> torch.Tensor:
        spec = self.front_end(wave)  # (1, time, mel), normalised
        if not bool(torch.isfinite(spec).all()):  # finite samples whose power overflows (|x| ~ 1e17 and more)
            raise MediaError(path, f"the audio gives non-finite spectrogram features (samples up to "
                                   f"{float(wave.abs().max()):.3g}; audio is expected in [-1, 1])")
        a = self.config.augment
        if self.split == "train" and a is not None:
            g = torch.Generator().manual_seed(int(rng.integers(2**62)))
            spec = spec_augment(spec, a.freq_mask_count, a.freq_mask_max_bins, a.time_mask_count,
                                a.time_mask_max_frames, generator=g)
        return spec


class _MemoReader:
    """A MediaReader whose results stay in memory (VideoDataset(cache=...)). Used as a context manager per read:
    the file is opened at most once per read, only when something is not in memory yet (the first read reuses
    the reader that probed it), and closed at the end of the read. Frames are kept per request, audio as the
    whole stream at the requested rate."""

    def __init__(self, path: str, threads: int) -> None:
        self.path, self.threads = path, threads
        self._reader: MediaReader | None = MediaReader(path, threads=threads)  # open for the first read
        self.info = self._reader.info
        self._frames: dict[tuple, np.ndarray] = {}
        self._audio: tuple[int, np.ndarray] | None = None

    def __enter__(self) -> "_MemoReader":
        return self

    def __exit__(self, *exc) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _open(self) -> MediaReader:
        if self._reader is None:
            self._reader = MediaReader(self.path, threads=self.threads)
        return self._reader

    def frames(self, times: Sequence[float], size: tuple[int, int] | None = None,
               crop: tuple[int, int, int, int] | None = None) -> np.ndarray:
        key = (tuple(float(t) for t in times), size, crop)
        if key not in self._frames:
            self._frames[key] = self._open().frames(times, size=size, crop=crop)
        return self._frames[key]

    def audio(self, start: float, end: float, sample_rate: int = 16000) -> np.ndarray:
        a = self.info.audio
        if a is None:
            raise MediaError(self.path, "no audio stream")
        if self._audio is None or self._audio[0] != sample_rate:
            self._audio = sample_rate, self._open().audio(0.0, a.start + a.duration, sample_rate)
        wave = self._audio[1]
        i0, n = int(round(start * sample_rate)), int(round((end - start) * sample_rate))
        out = np.zeros(max(n, 0), np.float32)
        lo, hi = max(i0, 0), min(i0 + n, len(wave))
        if hi > lo:
            out[lo - i0:hi - i0] = wave[lo:hi]
        return out


# ---------------------------------------------------------------------------------------------------- batching
def collate(samples: Sequence[dict[str, Any] | Skipped]) -> dict[str, Any]:
    """Stack samples into a batch; skipped samples are left out and listed under 'skipped'. 'size' is the number
    of samples in the batch (0 if all were skipped)."""
    ok = [s for s in samples if not isinstance(s, Skipped)]
    batch: dict[str, Any] = {"skipped": [s for s in samples if isinstance(s, Skipped)], "size": len(ok)}
    if not ok:
        return batch
    for key in ("rgb", "spectrogram", "label"):
        if key in ok[0]:
            batch[key] = torch.stack([s[key] for s in ok])
    batch["missing"] = {m: torch.tensor([s["missing"][m] for s in ok]) for m in ok[0]["missing"]}
    batch["index"] = torch.tensor([s["index"] for s in ok])
    batch["path"] = [s["path"] for s in ok]
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers run in parallel already; one thread each avoids oversubscription
    exit_with_parent()


def exit_with_parent() -> None:
    """Linux: have the kernel kill this process (a DataLoader worker) when its parent dies. A training run killed
    with SIGKILL cannot stop its workers itself, and a worker busy decoding never reaches PyTorch's own check of the
    parent, so it would live on holding memory and files."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the line above ran
        os._exit(1)


class FFmpegSafeLoader(DataLoader):
    """A DataLoader whose forked workers cannot deadlock on FFmpeg state inherited from the parent.

    FFmpeg keeps thread pools inside decoders and resamplers. A forked worker has none of the parent's threads,
    and if its garbage collector frees an inherited FFmpeg object (say, one held by an exception traceback the
    parent no longer references), it waits forever on those threads. So before workers start, the parent collects
    its garbage (freeing such objects where their threads exist) and freezes the survivors, which the workers'
    collector then never visits. Workers still start with the fast 'fork' method.
    """

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        gc.collect()
        gc.freeze()
        try:
            return super().__iter__()  # the workers are forked here
        finally:
            gc.unfreeze()


def make_loader(dataset: VideoDataset, batch_size: int, num_workers: int = 0, shuffle: bool | None = None,
                drop_last: bool | None = None, sampler=None, **kwargs: Any) -> DataLoader:
    """A DataLoader (`FFmpegSafeLoader`) with `collate`; training shuffles and drops the last partial batch (as
    the official loader). Workers use one torch thread each."""
    train = dataset.split == "train"
    if num_workers > 0:
        kwargs.setdefault("worker_init_fn", _worker_init)
    return FFmpegSafeLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
                            shuffle=(train if shuffle is None else shuffle) if sampler is None else False,
                            drop_last=train if drop_last is None else drop_last, sampler=sampler, **kwargs)


def write_skipped(path: str | Path, skipped: Sequence[Skipped], extra: dict[str, Any] | None = None,
                  append: bool = False) -> None:
    """Every skipped sample as a CSV row: the columns of `extra` (e.g. the epoch), then path and reason. With
    `append`, rows go after those already in the file (the header is written once)."""
    path = Path(path)
    new = not (append and path.exists() and path.stat().st_size)
    with path.open("a" if append else "w", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow([*(extra or {}), "path", "reason"])
        writer.writerows([*(extra or {}).values(), s.path, s.reason] for s in skipped)


class SkipReport:
    """Counts skipped samples over an epoch: `update(batch)` for each batch, `summary()` at the end."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seen = 0
        self.skipped: list[Skipped] = []

    def update(self, batch: dict[str, Any]) -> None:
        self.seen += batch["size"] + len(batch["skipped"])
        self.skipped.extend(batch["skipped"])

    def summary(self, max_files: int = 10) -> str:
        if not self.skipped:
            return f"no sample skipped ({self.seen} seen)"
        reasons = collections.Counter(_reason_kind(s.reason) for s in self.skipped)
        lines = [f"skipped {len(self.skipped)} of {self.seen} samples: "
                 + "; ".join(f"{n} x {r}" for r, n in reasons.most_common())]
        for s in self.skipped[:max_files]:
            lines.append(f"  {s.path}: {s.reason}")
        if len(self.skipped) > max_files:
            lines.append(f"  ... and {len(self.skipped) - max_files} more")
        return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0].split(":")[0]
