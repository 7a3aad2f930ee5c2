"""Clips per second through the whole data pipeline, next to a bare PyAV decode of the same frames and audio.

    python benchmarks/data_throughput.py [--clips 32] [--size 360x640] [--epochs 2] [--batch-size 4]

It writes `--clips` 10-second, 25 fps H.264 + AAC files (a moving noise texture, so the decoder has real work),
then measures, on the training split with the official MBT-B/16x2 settings (32 frames at stride 2, resize to 256,
crop 224, scale jitter, colour augmentation, 8 s log-mel, SpecAugment):
  * bare decode: one process, PyAV only. For each clip: open, seek to the same random window, decode to the last
    needed frame, convert the 32 sampled frames to RGB arrays at the file's size, and decode and resample the
    8 s of audio to 16 kHz mono. FFmpeg chooses its decoding threads.
  * the pipeline (mbt.data.VideoDataset + make_loader) with 0, 1 and 2 workers: decode, sample, resize, augment,
    compute the features, collate.
Whole epochs are timed, including the start of the worker processes (about a second per epoch).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from mbt.data import DataConfig, VideoDataset, make_loader, read_csv
from mbt.data.sampling import num_units, train_offsets
from mbt.data.synthetic import tone_schedule, write_media


def texture_frames(size: tuple[int, int], seed: int):
    h, w = size
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (h + 200, w + 200, 3), dtype=np.uint8)
    texture = ((texture.astype(np.uint16) + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) // 3).astype(np.uint8)

    def frame(i: int, t: float, _size) -> np.ndarray:
        y, x = int(100 + 60 * np.sin(t)), int(100 + 60 * np.cos(0.7 * t))
        return texture[y:y + h, x:x + w]

    return frame


def make_clips(folder: Path, n: int, size: tuple[int, int]) -> Path:
    for i in range(n):
        path = folder / f"clip{i:03d}.mp4"
        if not path.exists():
            write_media(path, duration=10.0, fps=25, size=size, frame_fn=texture_frames(size, i),
                        audio_fn=tone_schedule([200.0 * (k + 1) for k in range(10)]), sample_rate=44100,
                        layout="stereo")
    csv = folder / "clips.csv"
    csv.write_text("path,label\n" + "".join(f"clip{i:03d}.mp4,c{i % 4}\n" for i in range(n)))
    return csv


def bare_decode(paths: list[str], cfg: DataConfig, epoch: int, seed: int = 0) -> float:
    """Seconds to decode the frames and audio of one training window per clip with PyAV alone: the same windows
    as the pipeline's (the same per-sample random generator), since decoding cost grows with the distance from
    the last keyframe."""
    hop = cfg.front_end.geometry.frame_shift
    start = time.perf_counter()
    for index, path in enumerate(paths):
        rng = np.random.default_rng([seed, epoch, index])  # as VideoDataset draws a training sample
        with av.open(path) as container:
            vs, aud = container.streams.video[0], container.streams.audio[0]
            vs.thread_type = "AUTO"
            duration = float(vs.duration * vs.time_base)
            o_rgb, o_spec = train_offsets(num_units(duration, cfg.fps), num_units(duration, cfg.spec_rate),
                                          cfg.num_frames, cfg.stride, rng)
            times = [(o_rgb + k * cfg.stride) / cfg.fps for k in range(cfg.num_frames)]
            container.seek(int(times[0] / vs.time_base), stream=vs)
            frames, prev, j = [], None, 0
            for frame in container.decode(vs):
                while j < len(times) and frame.time > times[j] + 1e-6:
                    frames.append(prev.to_ndarray(format="rgb24"))
                    j += 1
                if j == len(times):
                    break
                prev = frame
            a0 = o_spec * hop / 16000
            a1 = a0 + cfg.window_samples() / 16000
            container.seek(int(max(a0 - 0.5, 0) / aud.time_base), stream=aud)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
            samples = []
            for frame in container.decode(aud):
                samples += [f.to_ndarray() for f in resampler.resample(frame)]
                if frame.time > a1:
                    break
            resampler = None
    return time.perf_counter() - start


def pipeline(csv: Path, cfg: DataConfig, workers: int, epochs: int, batch_size: int) -> tuple[float, int]:
    """(seconds, clips) of loading all clips `epochs` times, in order (the windows bare_decode takes). Whole
    epochs are timed, worker start-up included."""
    dataset = VideoDataset(read_csv(csv), cfg, split="train", seed=0)
    loader = make_loader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False, drop_last=False)
    seconds, clips = 0.0, 0
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        t = time.perf_counter()
        for batch in loader:
            clips += batch["size"]
        seconds += time.perf_counter() - t
    return seconds, clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--size", default="360x640", help="frame height x width of the generated clips")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dir", default=None, help="where to write the clips (default: a temporary folder)")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    folder = Path(args.dir or tempfile.mkdtemp(prefix="mbt-data-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    csv = make_clips(folder, args.clips, size)
    print(f"# {args.clips} clips of 10 s, {size[0]}x{size[1]} at 25 fps, H.264 + AAC 44.1 kHz stereo, in {folder} "
          f"(written in {time.perf_counter() - t:.0f} s)")
    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, PyAV {av.__version__}")
    cfg = DataConfig()
    paths = [str(folder / f"clip{i:03d}.mp4") for i in range(args.clips)]
    bare_decode(paths[:2], cfg, epoch=99)  # warm-up
    bare_seconds = sum(bare_decode(paths, cfg, epoch=e) for e in range(args.epochs))
    bare_rate = args.clips * args.epochs / bare_seconds
    print("| loader | clips / s | share of bare decode |")
    print("|---|---:|---:|")
    print(f"| bare PyAV decode (1 process) | {bare_rate:.2f} | 100% |")
    for workers in (0, 1, 2):
        seconds, clips = pipeline(csv, cfg, workers, args.epochs, args.batch_size)
        rate = clips / seconds
        print(f"| pipeline, {workers} worker{'s' if workers != 1 else ''} | {rate:.2f} | {100 * rate / bare_rate:.0f}% |")


if __name__ == "__main__":
    main()
