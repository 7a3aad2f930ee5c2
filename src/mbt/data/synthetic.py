"""Media files with known content, written with PyAV: for tests, benchmarks and demos (nothing is downloaded).

`write_media` writes a video file whose frames and audio are given by functions of time. The defaults make the
content checkable after a round trip through an encoder:
  * `index_frame`: frame i is painted with a colour that encodes i (`frame_index` reads it back, robust to lossy
    compression and resizing), so a test can tell which source frame a sampled frame is;
  * `tone_schedule(freqs, segment)`: a sine whose frequency changes every `segment` seconds, so a test can find a
    time in the audio from the frequency of the spectrogram peak.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import av
import numpy as np

FrameFn = Callable[[int, float, tuple[int, int]], np.ndarray]
AudioFn = Callable[[np.ndarray], np.ndarray]


def index_frame(i: int, t: float, size: tuple[int, int]) -> np.ndarray:
    """A flat frame whose colour encodes its index i (up to 255): R = 16 (i mod 16) + 8, G = 16 (i // 16) + 8."""
    h, w = size
    frame = np.empty((h, w, 3), np.uint8)
    frame[..., 0] = (i % 16) * 16 + 8
    frame[..., 1] = ((i // 16) % 16) * 16 + 8
    frame[..., 2] = 128
    return frame


def frame_index(rgb: np.ndarray) -> int:
    """Read back the index painted by `index_frame` from an RGB frame (H, W, 3), uint8 or float in [0, 255]."""
    r, g = (float(np.median(rgb[..., c])) for c in (0, 1))
    return int(round((r - 8) / 16)) + 16 * int(round((g - 8) / 16))


def tone_schedule(freqs: Sequence[float], segment: float = 1.0, amplitude: float = 0.5) -> AudioFn:
    """A sine of frequency freqs[k] during [k * segment, (k + 1) * segment) (the last one holds), phase-continuous."""
    freqs = np.asarray(freqs, dtype=np.float64)

    def fn(t: np.ndarray) -> np.ndarray:
        k = np.minimum((t / segment).astype(np.int64), len(freqs) - 1)
        f = freqs[k]
        dt = np.diff(t, prepend=t[0] - (t[1] - t[0] if len(t) > 1 else 0.0))
        return (amplitude * np.sin(2 * np.pi * np.cumsum(f * dt))).astype(np.float32)[None]

    return fn


def write_media(path: str | Path, *, duration: float = 2.0, fps: float = 25.0, size: tuple[int, int] = (48, 64),
                video: bool = True, audio: bool = True, sample_rate: int = 16000, layout: str = "mono",
                video_codec: str = "libx264", pix_fmt: str = "yuv420p", audio_codec: str = "aac",
                frame_fn: FrameFn = index_frame, audio_fn: AudioFn | None = None, gop: int | None = None,
                video_options: dict[str, str] | None = None, video_start: float = 0.0,
                audio_start: float = 0.0, audio_duration: float | None = None,
                display_rotation: tuple[int, bool] | None = None) -> Path:
    """Write a media file with PyAV. The container comes from the file extension.

    Args:
      duration: seconds of each stream (frames: round(duration * fps)).
      size: (height, width) of the frames.
      layout: audio channel layout ('mono', 'stereo', '5.1', ...); `audio_fn` output is copied to every channel.
      frame_fn: (index, time, size) -> uint8 (H, W, 3) frame.
      audio_fn: times (n,) in seconds -> float32 (1, n) or (channels, n) samples in [-1, 1]; default: a 440 Hz tone.
      gop: keyframe interval in frames (the encoder's default if None).
      video_start, audio_start: seconds at which each stream's timestamps start (streams that start apart).
      audio_duration: seconds of audio, if not `duration` (streams of different lengths).
      display_rotation: (degrees counter-clockwise, hflip): a display matrix, as a phone writes one (MP4/MOV).
    """
    path = Path(path)
    audio_fn = audio_fn or tone_schedule([440.0])
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        vs = as_ = None
        if video:
            vs = container.add_stream(video_codec, rate=rate, options=video_options or {})
            vs.height, vs.width = size
            vs.pix_fmt = pix_fmt
            if gop is not None:
                vs.codec_context.gop_size = gop
            if display_rotation is not None:
                vs.set_display_rotation(display_rotation[0], hflip=display_rotation[1])
        if audio:
            as_ = container.add_stream(audio_codec, rate=sample_rate, layout=layout)
        if vs is not None:
            for i in range(int(round(duration * fps))):
                frame = av.VideoFrame.from_ndarray(frame_fn(i, i / fps, size), format="rgb24")
                frame.pts, frame.time_base = i + int(round(video_start * rate)), 1 / rate
                container.mux(vs.encode(frame))
            container.mux(vs.encode())
        if as_ is not None:
            channels = av.AudioLayout(layout).nb_channels
            n = int(round((duration if audio_duration is None else audio_duration) * sample_rate))
            samples = np.asarray(audio_fn(np.arange(n) / sample_rate), np.float32)
            samples = np.ascontiguousarray(np.broadcast_to(samples, (channels, n)))
            chunk = 4096
            for start in range(0, n, chunk):
                # Explicit pts let the muxer record the encoder's priming delay (an mp4 edit list), so the decoded
                # audio starts at time 0 as written.
                frame = av.AudioFrame.from_ndarray(samples[:, start:start + chunk], format="fltp", layout=layout)
                frame.sample_rate, frame.time_base = sample_rate, Fraction(1, sample_rate)
                frame.pts = start + int(round(audio_start * sample_rate))
                container.mux(as_.encode(frame))
            container.mux(as_.encode())
    return path


def write_streams(path: str | Path, videos: Sequence[tuple[tuple[int, int], FrameFn, bool]] = (),
                  audios: Sequence[tuple[AudioFn, str, bool]] = (), cover: bool = False,
                  duration: float = 2.0) -> Path:
    """A file with several streams (PyAV), to test which one is read.

    Args:
      videos: per video stream, ((height, width), frame_fn, default): 25 fps H.264 (MJPEG with no other choice),
        `default` sets the stream's default disposition.
      audios: per audio stream, (audio_fn, layout, default): 16 kHz AAC (MP3 in an .mp3 file).
      cover: an attached picture (cover art: one 96x96 MJPEG image, disposition attached_pic), written first.
    """
    path = Path(path)
    with av.open(str(path), "w") as c:
        pic = None
        if cover:
            pic = c.add_stream("mjpeg", rate=1)
            pic.width, pic.height, pic.pix_fmt = 96, 96, "yuvj420p"
            pic.disposition = av.stream.Disposition.attached_pic
        vs = []
        for (h, w), fn, default in videos:  # every stream is added before anything is written
            s = c.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            s.disposition = av.stream.Disposition.default if default else av.stream.Disposition(0)
            vs.append((s, fn))
        as_ = []
        for fn, layout, default in audios:
            s = c.add_stream("mp3" if path.suffix.lower() == ".mp3" else "aac", rate=16000, layout=layout)
            s.disposition = av.stream.Disposition.default if default else av.stream.Disposition(0)
            as_.append((s, fn, layout))
        if pic is not None:
            frame = av.VideoFrame.from_ndarray(np.full((96, 96, 3), 200, np.uint8), format="rgb24")
            c.mux(pic.encode(frame.reformat(format="yuvj420p")))
            c.mux(pic.encode())
        for s, fn in vs:
            for i in range(int(round(duration * 25))):
                frame = av.VideoFrame.from_ndarray(fn(i, i / 25, (s.height, s.width)), format="rgb24")
                frame.pts = i
                c.mux(s.encode(frame))
            c.mux(s.encode())
        for s, fn, layout in as_:
            n = int(round(duration * 16000))
            channels = av.AudioLayout(layout).nb_channels
            samples = np.ascontiguousarray(np.broadcast_to(np.asarray(fn(np.arange(n) / 16000), np.float32),
                                                           (channels, n)))
            for start in range(0, n, 4096):
                frame = av.AudioFrame.from_ndarray(samples[:, start:start + 4096], format="fltp", layout=layout)
                frame.sample_rate, frame.pts = 16000, start
                c.mux(s.encode(frame))
            c.mux(s.encode())
    return path
