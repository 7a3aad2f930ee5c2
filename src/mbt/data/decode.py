"""Decoding video files with PyAV (FFmpeg): frames at given times, audio of a window as 16 kHz mono.

`MediaReader` opens a file once and serves any number of requests:
  * `frames(times, size)`: the frame shown at each time (the last frame whose timestamp is <= the time), converted
    to RGB and resized by FFmpeg. It seeks to each run of nearby times and decodes only from the keyframe before it
    up to the last time asked for: a few seconds of a long video cost a few seconds of decoding.
  * `audio(start, end, sample_rate)`: the samples of [start, end), downmixed to mono and resampled by FFmpeg.
Times are seconds from the start of the file (the container's start time is time 0). Every failure is a
`MediaError` whose message names the file and the reason.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import av
import numpy as np

from ..errors import MediaError

# A stream may end this much before the time asked for: the last frame is shown for a frame's duration, and
# audio/video streams of one file often differ in length by a few tens of milliseconds.
END_TOLERANCE = 0.1  # seconds
# A stream whose packets end more than this before the container's duration makes the file count as truncated
# (streams of one file differ in length by less).
STREAM_LENGTH_SLACK = 2.0  # seconds
# Times further apart than this are fetched with separate seeks rather than by decoding through the gap.
SEEK_GAP = 2.0  # seconds
# Decoded audio whose timestamp is further than this from where the samples so far end is placed by its timestamp
# (a gap becomes silence, an overlap is dropped); smaller differences are timestamp rounding.
GAP_TOLERANCE = 0.01  # seconds
# Larger jumps of the audio timestamps are discontinuities (streams joined end to end), not gaps or overlaps: the
# samples continue where the previous ones end (FFmpeg's dts_delta_threshold is 10 s for such formats).
MAX_GAP = 10.0  # seconds
MAX_OVERLAP = 0.5  # seconds
# Packets the audio decoder may reject right after a seek before the first frame decodes (a seek into the middle
# of a frame in streams without frame-aligned packets, such as MPEG-PS); after more, the audio is decoded from the
# file's start instead. A rejected packet after the first decoded frame is damage.
MAX_REJECTED_AFTER_SEEK = 16


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    width: int
    height: int
    start: float  # seconds from the file's time 0
    duration: float  # seconds


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    start: float
    duration: float


@dataclass(frozen=True)
class MediaInfo:
    path: str
    duration: float  # seconds: the longest stream
    video: VideoInfo | None
    audio: AudioInfo | None


_ORIENTATION: dict[tuple, str | None] = {}  # per (path, size, mtime): see MediaReader._orientation
QUARTER_TURNS = ("clock", "cclock", "clock_flip", "cclock_flip")  # turns that swap a frame's height and width


def orientation(matrix: Sequence[int], rotation: float) -> str | None:
    """The turn that shows a frame upright, as FFmpeg's autorotate chooses it from a display matrix (`matrix`, 9
    integers) and its counter-clockwise `rotation` in degrees: None, 'clock', 'cclock', 'clock_flip',
    'cclock_flip', 'hflip', 'vflip' or 'hvflip' (a half turn). Angles that are not a multiple of 90 are ignored."""
    theta = -rotation
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)  # FFmpeg's get_rotation: in [0, 360)
    if abs(theta - 90) < 1:
        return "cclock_flip" if matrix[3] > 0 else "clock"
    if abs(theta - 180) < 1:
        h, v = matrix[0] < 0, matrix[4] < 0
        return "hvflip" if h and v else ("hflip" if h else ("vflip" if v else None))
    if abs(theta - 270) < 1:
        return "clock_flip" if matrix[3] < 0 else "cclock"
    if abs(theta) < 1 and matrix[4] < 0:
        return "vflip"
    return None


def upright(image: np.ndarray, turn: str | None) -> np.ndarray:
    """Apply `orientation`'s turn to an (H, W, C) image (FFmpeg's transpose, hflip and vflip filters)."""
    if turn is None:
        return image
    out = {"clock": lambda x: np.rot90(x, -1), "cclock": lambda x: np.rot90(x, 1),
           "clock_flip": lambda x: np.rot90(x, -1)[::-1], "cclock_flip": lambda x: np.rot90(x, 1)[::-1],
           "hflip": lambda x: x[:, ::-1], "vflip": lambda x: x[::-1], "hvflip": lambda x: x[::-1, ::-1]}[turn](image)
    return np.ascontiguousarray(out)


def main_stream(streams: Sequence) -> object | None:
    """The stream a viewer would play: attached pictures (cover art, thumbnails) are never it; among the rest the
    one marked default, else the largest (pixels for video, channels for audio), else the first."""
    candidates = [s for s in streams if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not candidates:
        return None
    default = [s for s in candidates if s.disposition & av.stream.Disposition.default]
    if len(default) == 1:
        return default[0]
    pool = default or candidates

    def size(s) -> int:
        cc = s.codec_context
        return (cc.width or 0) * (cc.height or 0) if s.type == "video" else (cc.channels or 0)

    return max(pool, key=lambda s: (size(s), -s.index))


def shorter_side_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(height, width) with the shorter side resized to `shorter` and the aspect ratio kept; the longer side is
    floored, as DMVR's resize_smallest casts it to an integer."""
    if height <= width:
        return shorter, max(1, int(width * shorter / height))
    return max(1, int(height * shorter / width)), shorter


class MediaReader:
    """An open media file. Use as a context manager, or call `close()`.

    Args:
      path: the file.
      threads: FFmpeg decoding threads for video (0 = FFmpeg's choice). Use 1 in DataLoader workers, which already
        run in parallel.
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        self.path = str(path)
        self.decoded_frames = 0  # video frames decoded so far: shows that windows are reached by seeking
        if not os.path.exists(self.path):
            raise MediaError(path, "no such file")
        if os.path.isdir(self.path):
            raise MediaError(path, "is a directory, not a media file")
        if os.path.getsize(self.path) == 0:
            raise MediaError(path, "empty file")
        self.threads = threads
        self.orientation: str | None = None  # how decoded frames are turned upright (display matrix)
        self._open()
        try:
            if self._video is None and self._audio is None:
                raise MediaError(path, "no video or audio stream")
            self.t0 = self.container.start_time / av.time_base if self.container.start_time is not None else 0.0
            self.info = self._probe()
        except BaseException:
            self.container.close()
            raise

    def _open(self, video: int | None = None, audio: int | None = None) -> None:
        """Open the container and pick the streams with these indices, by default its main video and audio
        streams (`main_stream`)."""
        try:
            self.container = av.open(self.path, metadata_errors="ignore")
        except (av.error.FFmpegError, OSError) as e:
            raise MediaError(self.path, f"not a media file FFmpeg can read ({_reason(e)})") from None
        by_index = {s.index: s for s in self.container.streams}
        self._video = by_index[video] if video is not None else main_stream(self.container.streams.video)
        self._audio = by_index[audio] if audio is not None else main_stream(self.container.streams.audio)
        if self._video is not None:
            self._video.thread_type = "AUTO"
            self._video.thread_count = self.threads

    def _seek(self, stream, t: float) -> bool:
        """Put the demuxer at the keyframe at or before time `t` (seconds from the file's start) of `stream`.
        A time at or before the stream's first packet, or a seek the demuxer refuses (MP3, AVI, FLV and raw AAC
        refuse times before their first packet; some files cannot seek at all), reopens the file so decoding starts
        from its very first packet, priming samples included. Returns True when decoding starts from the start."""
        start = self._stream_span(stream)[0]
        if t > start:
            try:
                self.container.seek(int(math.floor((t + self.t0) / stream.time_base)), stream=stream,
                                    backward=True)
                return False
            except (av.error.FFmpegError, OSError):
                pass
        self._rewind()
        return True

    def _rewind(self) -> None:
        """Reopen the file: the next decode starts at its first packet."""
        video = None if self._video is None else self._video.index
        audio = None if self._audio is None else self._audio.index
        self.container.close()
        self._open(video, audio)  # the same streams (indices are stable across opens of one file)

    # ------------------------------------------------------------------ info
    def _stream_span(self, stream) -> tuple[float, float | None]:
        start = float(stream.start_time * stream.time_base) - self.t0 if stream.start_time is not None else 0.0
        duration = float(stream.duration * stream.time_base) if stream.duration is not None else None
        return start, duration

    def _probe(self) -> MediaInfo:
        container_duration = (self.container.duration / av.time_base if self.container.duration is not None
                              else None)
        video = audio = None
        if self._video is not None:
            vs = self._video
            rate = vs.average_rate or vs.guessed_rate or vs.base_rate
            fps = float(rate) if rate else 25.0
            start, duration = self._stream_span(vs)
            width, height = vs.codec_context.width, vs.codec_context.height
            self.orientation = self._orientation(vs)
            if self.orientation in QUARTER_TURNS:
                width, height = height, width  # the size as displayed
            if width <= 0 or height <= 0:
                raise MediaError(self.path, "the video stream has no frame size (damaged header)")
            if duration is None and vs.frames:
                duration = vs.frames / fps
            if duration is None:  # reads the stream's last packets
                duration = self._stream_end(vs, container_duration, fps) - start
            video = VideoInfo(fps, width, height, start, max(duration, 0.0))
        if self._audio is not None:
            a = self._audio
            start, duration = self._stream_span(a)
            rate, channels = a.rate, a.codec_context.channels
            if not rate:
                raise MediaError(self.path, "the audio stream has no sample rate (damaged header)")
            if duration is None:
                duration = self._stream_end(a, container_duration) - start
            audio = AudioInfo(int(rate), channels, start, max(duration, 0.0))
        total = max((s.start + s.duration for s in (video, audio) if s is not None), default=0.0)
        return MediaInfo(self.path, total, video, audio)

    def _orientation(self, stream) -> str | None:
        """How to turn decoded frames upright, from the display matrix (phone videos): FFmpeg's own rule (its
        autorotate), read off the first frame. Remembered per file (path, size, time), so a dataset that opens a
        file for every sample decodes that frame once. The demuxer is left after that frame: reads seek first."""
        st = os.stat(self.path)
        key = (self.path, st.st_size, st.st_mtime_ns)
        if key not in _ORIENTATION:
            matrix = None
            try:
                frame = next(self.container.decode(stream), None)
                data = None if frame is None else frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
                if data is not None:
                    matrix = (struct.unpack("<9i", bytes(data)[:36]), float(frame.rotation))
            except (av.error.FFmpegError, OSError, ValueError, StopIteration):
                pass
            _ORIENTATION[key] = None if matrix is None else orientation(*matrix)
        return _ORIENTATION[key]

    def _stream_end(self, stream, container_duration: float | None, fps: float | None = None) -> float:
        """End time of a stream whose length the container does not state (Matroska, WebM, MPEG-TS).

        The container's duration is the longest stream's; the streams of one file often differ by a fraction of a
        second. So the stream's own last packets are read (after a seek to a few seconds before the end: no
        decoding, little reading). A file whose packets end well before its stated duration is truncated: then
        the stated duration is kept, and reading past the real end is an error.
        """
        end, untimed = None, 0
        try:
            if container_duration is not None and container_duration > 5.0:
                self.container.seek(int((container_duration - 5.0 + self.t0) / stream.time_base), stream=stream)
            else:  # a short file is read whole, from its first packet (an earlier probe step may have read on)
                index = stream.index
                self._rewind()
                stream = next(s for s in (self._video, self._audio) if s is not None and s.index == index)
            for packet in self.container.demux(stream):
                if packet.pts is not None:
                    t = float((packet.pts + (packet.duration or 0)) * packet.time_base) - self.t0
                    end = t if end is None else max(end, t)
                elif packet.size:
                    untimed += 1
        except (av.error.FFmpegError, OSError):
            pass
        if end is None and untimed and fps and not (container_duration and container_duration > 5.0):
            end = untimed / fps  # a raw stream without timestamps, read whole: its frames at the frame rate
        # The demuxer is left where it stopped: every read puts it where it needs it (`_seek`).
        if end is None:
            return container_duration if container_duration is not None else 0.0
        if container_duration is not None and end < container_duration - STREAM_LENGTH_SLACK:
            return container_duration  # truncated: let the read fail and say so
        return end

    # ------------------------------------------------------------------ video
    def frames(self, times: Sequence[float], size: tuple[int, int] | None = None,
               crop: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """RGB frames shown at `times` (seconds), resized by FFmpeg to `size` = (height, width) if given, then cut
        to `crop` = (top, left, height, width) if given (before the frames are stacked: nothing else is copied).

        Returns uint8 (len(times), H, W, 3). Raises MediaError if there is no video stream, if decoding fails, or
        if the stream ends more than END_TOLERANCE before a requested time (a truncated or damaged file).
        """
        if self._video is None:
            raise MediaError(self.path, "no video stream")
        times = np.asarray(times, dtype=np.float64)
        order = np.argsort(times, kind="stable")
        out: list[np.ndarray | None] = [None] * len(times)
        run: list[int] = []
        for i in order:
            if run and times[i] - times[run[-1]] > SEEK_GAP:
                self._decode_run(times, run, out, size)
                run = []
            run.append(int(i))
        if run:
            self._decode_run(times, run, out, size)
        if crop is not None:
            y, x, h, w = crop
            out = [f[y:y + h, x:x + w] for f in out]
        return np.stack(out)  # type: ignore[arg-type]

    def _decode_run(self, times: np.ndarray, run: list[int], out: list, size: tuple[int, int] | None) -> None:
        vs = self._video
        first = times[run[0]]
        # Seek to the keyframe at or before the first time; if the demuxer overshoots, retry from further back.
        for back in (0.0, 10.0, math.inf):
            from_start = self._seek(vs, -math.inf if back == math.inf else first - back)
            if self._collect(times, run, out, size, allow_restart=not from_start, from_start=from_start):
                return
            vs = self._video

    def _collect(self, times, run, out, size, allow_restart: bool, from_start: bool = False) -> bool:
        """Decode from the current position, assigning frames to the times in `run` (sorted). Returns False if the
        first frame decoded comes after the first time by more than a frame (a seek that overshot), or if frames
        carry no timestamps and decoding did not start at the beginning (raw H.264/HEVC streams: their frames are
        then counted from the stream's start at the stream's frame rate)."""
        vs = self._video
        fps = self.info.video.fps
        eps = 1e-6
        turn = self.orientation
        if size is not None and turn in QUARTER_TURNS:
            size = (size[1], size[0])  # the coded frame is resized, then turned upright
        kwargs = {} if size is None else dict(height=size[0], width=size[1], interpolation="BILINEAR")
        cache: list = [None, None]  # [frame, its RGB array]: each frame is converted at most once

        def rgb(frame) -> np.ndarray:
            if cache[0] is not frame:
                cache[0], cache[1] = frame, upright(frame.to_ndarray(format="rgb24", **kwargs), turn)
            return cache[1]

        j, prev, prev_t, first = 0, None, None, True
        try:
            for frame in self.container.decode(vs):
                self.decoded_frames += 1
                t = self._frame_time(frame)
                if t is None:  # no timestamp: count frames, which needs a known position
                    if prev_t is not None:
                        t = prev_t + 1.0 / fps
                    elif from_start:
                        t = self.info.video.start
                    else:
                        return False
                if first:
                    first = False
                    if t > times[run[0]] + 1.5 / fps and t > self.info.video.start + 1.5 / fps and allow_restart:
                        return False
                while j < len(run) and t > times[run[j]] + eps:
                    # `prev` is on screen at times[run[j]]; before the first frame, the first frame stands in.
                    out[run[j]] = rgb(prev if prev is not None else frame)
                    j += 1
                if j == len(run):
                    return True
                prev, prev_t = frame, t
        except av.error.FFmpegError as e:
            raise MediaError(self.path, f"video decoding failed ({_reason(e)})") from None
        # End of stream: the last frame stays on screen for one frame duration (plus tolerance).
        if prev is None:
            if allow_restart:  # the seek landed past the last keyframe: go back further
                return False
            raise MediaError(self.path, "the video stream has no decodable frame")
        last_ok = prev_t + 1.0 / fps + END_TOLERANCE
        for k in run[j:]:
            if times[k] > last_ok:
                raise MediaError(self.path, f"truncated or damaged: video frames end at {prev_t + 1 / fps:.2f} s, "
                                            f"but the file says {self.info.video.start + self.info.video.duration:.2f} "
                                            f"s and a frame at {times[k]:.2f} s was asked for")
            out[k] = rgb(prev)
        return True

    def _frame_time(self, frame) -> float | None:
        """Seconds from the file's start, or None for a frame without a timestamp."""
        if frame.pts is not None:
            return float(frame.pts * frame.time_base) - self.t0
        if frame.time is not None:
            return frame.time - self.t0
        return None

    # ------------------------------------------------------------------ audio
    def audio(self, start: float, end: float, sample_rate: int = 16000) -> np.ndarray:
        """Mono float32 samples of [start, end) at `sample_rate`, downmixed and resampled by FFmpeg.

        Returns exactly round((end - start) * sample_rate) samples. Up to END_TOLERANCE missing at either end
        (streams of slightly different lengths) is filled with silence; more is a MediaError (truncated file).
        """
        if self._audio is None:
            raise MediaError(self.path, "no audio stream")
        n = int(round((end - start) * sample_rate))
        if n <= 0:
            return np.zeros(0, np.float32)
        a = self._audio
        if end <= self.info.audio.start:  # the window ends before the audio starts: silence
            return np.zeros(n, np.float32)
        # Seek by the audio stream itself (a seek without a stream follows the video, whose start may differ),
        # half a second early: the decoder needs the previous frame's overlap, and near the start the codec's
        # priming packet (before time 0, which a seek to exactly 0 would skip: `_seek` then reopens the file).
        from_start = self._seek(a, start - 0.5)
        try:
            first_t, chunks = self._decode_audio(end, sample_rate)
        except _LostSync:
            # The demuxer lost the packet framing at the seek point (MPEG-PS audio, whose packets do not start on
            # frame boundaries, may not find it again): decode from the file's start instead.
            lost = MediaError(self.path, "audio decoding failed (the decoder rejects every packet)")
            if from_start:
                raise lost from None
            self._rewind()
            try:
                first_t, chunks = self._decode_audio(end, sample_rate)
            except _LostSync:
                raise lost from None
        if first_t is None:
            raise MediaError(self.path, "the audio stream has no decodable samples")
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        i0 = int(round((start - first_t) * sample_rate))
        lead = min(max(0, -i0), n)  # silence before the first sample (all of it when the window ends before)
        got = samples[max(i0, 0): max(i0, 0) + n - lead]
        tail = n - lead - got.size
        # Before the stream's declared start there is no audio: silence. Data that starts later than declared is
        # a damaged stream.
        if first_t > max(start, self.info.audio.start) + END_TOLERANCE:
            raise MediaError(self.path, f"audio data starts at {first_t:.2f} s, after the {start:.2f} s asked for "
                                        f"(the stream says it starts at {self.info.audio.start:.2f} s)")
        if tail > END_TOLERANCE * sample_rate:
            raise MediaError(self.path, f"truncated or damaged: audio ends at {first_t + samples.size / sample_rate:.2f}"
                                        f" s, but the file says {self.info.audio.start + self.info.audio.duration:.2f}"
                                        f" s and audio until {end:.2f} s was asked for")
        if lead or tail:
            got = np.concatenate([np.zeros(lead, np.float32), got, np.zeros(tail, np.float32)])
        bad = ~np.isfinite(got)
        if bad.any():  # a float WAV can hold NaN or inf; they would turn a whole model into NaN
            at = start + int(np.argmax(bad)) / sample_rate
            raise MediaError(self.path, f"{int(bad.sum())} non-finite audio samples (NaN or inf) in "
                                        f"{start:.2f}-{end:.2f} s, the first at {at:.2f} s")
        return np.ascontiguousarray(got, dtype=np.float32)

    def _decode_audio(self, end: float, sample_rate: int) -> tuple[float | None, list[np.ndarray]]:
        """Decode the audio stream from where the demuxer is until `end` (+50 ms), resampled to mono float at
        `sample_rate`: (time of the first sample, chunks of samples placed by their timestamps). Raises _LostSync
        when the decoder rejects MAX_REJECTED_AFTER_SEEK packets before a first frame, MediaError on damage."""
        a = self._audio
        resampler = _mono_resampler(sample_rate)
        chunks: list[np.ndarray] = []
        first_t: float | None = None
        have = 0
        slack = int(GAP_TOLERANCE * sample_rate)

        rebase = 0  # samples added to timestamp positions after a discontinuity

        def take(frames) -> None:
            """Append resampled frames where their timestamps put them: a gap in the timestamps (a stream with a
            pause, or packets lost to damage) is silence, a small overlap is dropped. A jump back by more than
            MAX_OVERLAP or forward by more than MAX_GAP is a discontinuity (streams joined end to end, as in
            concatenated MPEG-TS): the samples continue where the previous ones end, as FFmpeg continues them."""
            nonlocal first_t, have, rebase
            for f in frames:
                t = float(f.pts * f.time_base) - self.t0 if f.pts is not None else None
                if first_t is None:
                    first_t = t if t is not None else self.info.audio.start
                arr = f.to_ndarray().reshape(-1)
                if t is not None:
                    at = int(round((t - first_t) * sample_rate)) + rebase
                    jump = at - have
                    if jump < -MAX_OVERLAP * sample_rate or jump > MAX_GAP * sample_rate:
                        rebase -= jump  # a discontinuity: continue from here
                    elif jump > slack:
                        chunks.append(np.zeros(jump, np.float32))
                        have = at
                    elif jump < -slack:
                        arr = arr[-jump:]
                chunks.append(arr)
                have += arr.size

        rejected = 0
        try:
            for packet in self.container.demux(a):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    # A seek can land inside a frame of a stream whose packets are not frame-aligned (MPEG-PS
                    # audio): the decoder rejects pieces until it finds a frame again, as FFmpeg does ("Header
                    # missing"). Before the first decoded frame that is expected; after it, it is damage.
                    if first_t is not None:
                        raise
                    rejected += 1
                    if rejected > MAX_REJECTED_AFTER_SEEK:
                        raise _LostSync() from None
                    continue
                for frame in frames:
                    try:
                        out = resampler.resample(frame)
                    except ValueError:  # the stream changed rate or layout part-way: flush, start a new resampler
                        take(resampler.resample(None))
                        resampler = _mono_resampler(sample_rate)
                        out = resampler.resample(frame)
                    take(out)
                if first_t is not None and first_t + have / sample_rate >= end + 0.05:
                    break
            else:
                take(resampler.resample(None))  # flush at the end of the stream
        except av.error.FFmpegError as e:
            raise MediaError(self.path, f"audio decoding failed ({_reason(e)})") from None
        finally:
            # Free the resampler (and its filter-graph threads) now, not when an exception traceback that holds
            # this frame is collected: collected in a forked DataLoader worker, it would deadlock.
            resampler = None  # noqa: F841
        return first_t, chunks

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> "MediaReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _LostSync(Exception):
    """The audio decoder rejected every packet after a seek (see `MediaReader._decode_audio`)."""


def _mono_resampler(sample_rate: int) -> av.AudioResampler:
    """FFmpeg downmix to mono float at `sample_rate`. rematrix_maxval=1 normalises the downmix (5.1 -> mono would
    otherwise add up to about 3.5x and clip)."""
    return av.AudioResampler(format="flt", layout="mono", rate=sample_rate, options={"rematrix_maxval": "1.0"})


def _reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return text.split(": '")[0] if text else type(e).__name__


def probe(path: str | Path) -> MediaInfo:
    """Streams, rates, sizes and durations of a media file (no decoding)."""
    with MediaReader(path) as reader:
        return reader.info
