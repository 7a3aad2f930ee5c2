"""PyAV decoding on generated files whose content is known: frames at times, audio windows, bad files."""

from __future__ import annotations

import av
import numpy as np
import pytest

from mbt.data.decode import MediaError, MediaReader, probe, shorter_side_size
from mbt.data.synthetic import frame_index, tone_schedule, write_media

FREQS = [300.0 * (k + 1) for k in range(10)]  # 300 Hz in second 0, 600 Hz in second 1, ...


def dominant_frequency(x: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sample_rate / len(x))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    return {
        "25fps": write_media(d / "a.mp4", duration=10.0, size=(48, 64), audio_fn=tone_schedule(FREQS)),
        "30fps": write_media(d / "b.mp4", duration=4.0, fps=30.0, size=(48, 64)),
        "ntsc_mkv": write_media(d / "c.mkv", duration=3.0, fps=30000 / 1001, video_codec="ffv1", pix_fmt="yuv444p",
                                audio_codec="libopus", sample_rate=48000, layout="stereo",
                                audio_fn=tone_schedule([500, 1500, 2500])),
        "long": write_media(d / "long.mp4", duration=60.0, size=(32, 32), gop=25, audio=False),
        "48k_51": write_media(d / "d.mp4", duration=3.0, sample_rate=48000, layout="5.1",
                              audio_fn=tone_schedule([400, 800, 1600])),
        "8k": write_media(d / "e.mp4", duration=3.0, sample_rate=8000, audio_fn=tone_schedule([400, 800, 1600])),
        "no_audio": write_media(d / "f.mp4", duration=2.0, audio=False),
        "no_video": write_media(d / "g.m4a", duration=2.0, video=False),
        "odd": write_media(d / "h.mp4", duration=1.0, size=(47, 63), pix_fmt="yuv444p"),
        "one_frame": write_media(d / "i.mp4", duration=0.04, audio=False),
        "gray": write_media(d / "j.mkv", duration=1.0, video_codec="ffv1", pix_fmt="gray", audio=False),
    }


def test_probe(media):
    info = probe(media["25fps"])
    assert info.video.fps == 25.0 and (info.video.height, info.video.width) == (48, 64)
    assert info.video.duration == pytest.approx(10.0) and info.audio.sample_rate == 16000
    assert info.audio.duration == pytest.approx(10.0, abs=0.1)
    mkv = probe(media["ntsc_mkv"])
    assert mkv.video.fps == pytest.approx(29.97, abs=0.01) and mkv.audio.channels == 2
    assert probe(media["no_audio"]).audio is None and probe(media["no_video"]).video is None


def test_frames_at_times_25fps(media):
    with MediaReader(media["25fps"]) as r:
        idx = [37 + 2 * k for k in range(32)]
        frames = r.frames([i / 25 for i in idx])
        assert frames.shape == (32, 48, 64, 3) and frames.dtype == np.uint8
        assert [frame_index(f) for f in frames] == idx
        # any order, repeats, and times between frames (the frame on screen is the last one started)
        times = [9.99, 0.0, 0.039, 0.04, 5.0, 5.0, 2.5 + 0.02]
        assert [frame_index(f) for f in r.frames(times)] == [249, 0, 0, 1, 125, 125, 63]


@pytest.mark.parametrize("key, fps", [("30fps", 30.0), ("ntsc_mkv", 30000 / 1001)])
def test_frames_are_counted_at_the_target_rate_whatever_the_file_rate(media, key, fps):
    with MediaReader(media[key]) as r:
        times = [k / 25 for k in range(0, 60, 2)]
        got = [frame_index(f) for f in r.frames(times)]
    # The source frame shown at each 25 fps tick: the last whose timestamp, as the container stores it (mkv
    # rounds to milliseconds), is <= the tick. Timestamps read here with PyAV directly.
    with av.open(str(media[key])) as c:
        stamps = [float(f.pts * f.time_base) for f in c.decode(c.streams.video[0])]
    expected = [max(i for i, s in enumerate(stamps) if s <= t + 1e-9) for t in times]
    assert got == expected
    assert expected != [int(np.floor(t * 25 + 1e-9)) for t in times]  # the rates really differ


def test_frames_are_resized_by_ffmpeg(media):
    with MediaReader(media["25fps"]) as r:
        frames = r.frames([1.0, 2.0], size=shorter_side_size(48, 64, 256))
    assert frames.shape == (2, 256, 341, 3)
    assert [frame_index(f) for f in frames] == [25, 50]


def test_seeking_decodes_only_near_the_window(media):
    """32 frames at stride 2 from the middle of a 60 s video with a keyframe every second: at most the GOP before
    the window plus the window are decoded, not the 1500 frames of the file."""
    with MediaReader(media["long"]) as r:
        idx = [750 + 2 * k for k in range(32)]
        frames = r.frames([i / 25 for i in idx])
        assert [frame_index(f) % 256 for f in frames] == [i % 256 for i in idx]
        assert r.decoded_frames <= 25 + 64 + 25, r.decoded_frames


def test_wrapped_window_seeks_twice(media):
    with MediaReader(media["long"]) as r:
        idx = [(1480 + 2 * k) % 1500 for k in range(32)]
        frames = r.frames([i / 25 for i in idx])
        assert [frame_index(f) % 256 for f in frames] == [i % 256 for i in idx]
        assert r.decoded_frames < 200


def test_audio_window_content(media):
    with MediaReader(media["25fps"]) as r:
        a = r.audio(2.5, 4.5)
    assert a.shape == (32000,) and a.dtype == np.float32
    for t in (2.6, 3.2, 4.1):  # 900 Hz during second 2, 1200 during 3, 1500 during 4
        i = int((t - 2.5) * 16000)
        assert dominant_frequency(a[i:i + 1600], 16000) == pytest.approx(FREQS[int(t)], abs=10)


@pytest.mark.parametrize("key", ["48k_51", "8k", "ntsc_mkv"])
def test_audio_is_resampled_to_16k_mono(media, key):
    freqs = [500, 1500, 2500] if key == "ntsc_mkv" else [400, 800, 1600]
    with MediaReader(media[key]) as r:
        a = r.audio(0.0, 3.0)
    assert a.shape == (48000,)
    for second in range(3):
        seg = a[second * 16000 + 2000: second * 16000 + 14000]
        assert dominant_frequency(seg, 16000) == pytest.approx(freqs[second], abs=5)
        assert 0.2 < np.abs(seg).max() < 1.5  # the downmix keeps the level


def test_audio_and_video_line_up(tmp_path):
    """A flash in the frames and a click in the audio at the same moment (1.2 s) are found at the same time."""
    def frame_fn(i, t, size):
        return np.full((*size, 3), 255 if i == 30 else 0, np.uint8)

    def audio_fn(t):
        return np.where((t >= 1.2) & (t < 1.21), 0.9, 0.0).astype(np.float32)[None]

    path = write_media(tmp_path / "sync.mp4", duration=3.0, frame_fn=frame_fn, audio_fn=audio_fn)
    with MediaReader(path) as r:
        frames = r.frames([k / 25 for k in range(75)])
        audio = r.audio(0.0, 3.0)
    flash = np.argmax(frames.mean(axis=(1, 2, 3))) / 25
    click = np.argmax(np.abs(audio) > 0.3) / 16000
    assert abs(flash - 1.2) < 1e-6 and abs(click - 1.2) < 0.002
    assert abs(flash - click) <= 1 / 25


def test_odd_sizes_gray_and_one_frame(media):
    with MediaReader(media["odd"]) as r:
        f = r.frames([0.0, 0.5], size=shorter_side_size(47, 63, 32))
        assert f.shape == (2, 32, 42, 3) and [frame_index(x) for x in f] == [0, 12]  # 63 * 32 / 47 = 42.9, floored
    with MediaReader(media["gray"]) as r:  # a gray pixel format decodes to 3 equal channels
        f = r.frames([0.0, 0.5])
        assert f.shape == (2, 48, 64, 3)
        assert np.array_equal(f[..., 0], f[..., 1]) and np.array_equal(f[..., 0], f[..., 2])
        assert f[0].std() < 1 and abs(float(f[0].mean()) - float(f[1].mean())) > 5  # flat frames that change
    with MediaReader(media["one_frame"]) as r:
        assert [frame_index(x) for x in r.frames([0.0, 0.0, 0.05])] == [0, 0, 0]


def test_missing_streams(media):
    with MediaReader(media["no_audio"]) as r:
        with pytest.raises(MediaError, match="f.mp4: no audio stream"):
            r.audio(0, 1)
    with MediaReader(media["no_video"]) as r:
        with pytest.raises(MediaError, match="g.m4a: no video stream"):
            r.frames([0.0])
        assert r.audio(0.5, 1.0).shape == (8000,)


def test_asking_past_the_end_is_an_error(media):
    with MediaReader(media["25fps"]) as r:
        assert r.frames([10.05]).shape[0] == 1  # within the last frame's duration
        with pytest.raises(MediaError, match="truncated or damaged: video frames end at 10.00 s"):
            r.frames([10.5])
        assert r.audio(9.0, 10.05).shape == (16800,)  # a few ms short: padded with silence
        with pytest.raises(MediaError, match="truncated or damaged: audio ends"):
            r.audio(9.0, 11.0)


def test_bad_files_name_the_file(tmp_path, media):
    good = media["25fps"].read_bytes()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n" * 100)
    (tmp_path / "head.mp4").write_bytes(good[:2000])
    cases = {"missing.mp4": "no such file", "empty.mp4": "empty file", "text.mp4": "not a media file",
             "head.mp4": "not a media file"}
    for name, reason in cases.items():
        with pytest.raises(MediaError, match=reason) as e:
            MediaReader(tmp_path / name)
        assert str(e.value).startswith(str(tmp_path / name))


def test_truncated_file_is_detected_not_silently_short(tmp_path):
    """A file cut in the middle of its data (moov atom at the front): the header promises 10 s."""
    src = write_media(tmp_path / "src.mkv", duration=10.0, size=(48, 64), video_codec="libx264")
    data = src.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(MediaError, match="cut.mkv") as e:
        with MediaReader(cut) as r:
            r.frames([8.0])
            r.audio(7.0, 9.0)
    assert "truncated or damaged" in str(e.value) or "decoding failed" in str(e.value)


# ---------------------------------------------------------------------------------------------------- any container
def mel_peak(wave: np.ndarray) -> int:
    """The mel bin (logmel front end, 64 bins) that holds most energy, averaged over time."""
    from mbt.data.audio import FrontEndConfig, AudioFrontEnd

    import torch

    front = AudioFrontEnd(FrontEndConfig.preset("logmel", num_mel_bins=64))
    return int(front(torch.from_numpy(np.ascontiguousarray(wave)))[0].mean(0).argmax())


CONTAINERS = {  # files whose demuxer refuses a seek before their first packet, or whose packets have no timestamps
    "mp3": dict(video=False, audio_codec="mp3"),
    "aac": dict(video=False, audio_codec="aac"),  # raw ADTS
    "avi": dict(video_codec="mjpeg", pix_fmt="yuvj420p", audio_codec="pcm_s16le"),
    "flv": dict(video_codec="libx264", audio_codec="aac", sample_rate=44100),
    "h264": dict(audio=False),  # a raw H.264 stream: no timestamps at all
    # MPEG-PS: audio packets that do not start on frame boundaries, so a seek loses the framing
    "mpg": dict(video_codec="mpeg2video", audio_codec="mp2", sample_rate=48000),
}


@pytest.mark.parametrize("ext", sorted(CONTAINERS))
def test_every_container_is_read_from_its_first_sample(ext, tmp_path):
    """Windows at the very start and later: the tone of each second lands in its own mel bin (the bin a clean tone
    of that frequency fills), and the frame on screen at each time is the one decoded."""
    path = write_media(tmp_path / f"clip.{ext}", duration=4.0, audio_fn=tone_schedule(FREQS[:4]), **CONTAINERS[ext])
    with MediaReader(path) as r:
        if r.info.audio is not None:
            assert r.info.audio.duration == pytest.approx(4.0, abs=0.25 if ext == "aac" else 0.1)  # ADTS: estimated
            assert r.audio(0.0, 0.05).shape == (800,)  # a window that may end before the first decoded sample
            for second in (0, 1, 2, 3):
                wave = r.audio(second + 0.1, second + 0.9)
                clean = (0.5 * np.sin(2 * np.pi * FREQS[second] * np.arange(wave.size) / 16000)).astype(np.float32)
                assert dominant_frequency(wave, 16000) == pytest.approx(FREQS[second], rel=0.03)
                assert mel_peak(wave) == mel_peak(clean)
            assert np.abs(r.audio(0.0, 0.5)).max() > 0.2  # the first half second is there, not silence
        if r.info.video is not None:
            if ext != "mpg":  # FFmpeg estimates an MPEG-PS video duration (3.24 s here); the frames are all read
                assert r.info.video.duration == pytest.approx(4.0, abs=0.05)
            idx = [0, 1, 24, 50, 74, 97, 3]
            times = [r.info.video.start + (i + 0.5) / 25 for i in idx]
            assert [frame_index(f) for f in r.frames(times)] == idx
    assert (ext == "h264") == (r.info.audio is None) and (ext in ("mp3", "aac")) == (r.info.video is None)


def test_audio_that_starts_after_the_window_is_silence(tmp_path):
    """The audio stream starts at 2 s: earlier windows are silence, a window across the start is silence then the
    tone, and the frames are unaffected."""
    path = write_media(tmp_path / "late.mp4", duration=4.0, audio_start=2.0, audio_duration=2.0,
                       audio_fn=tone_schedule([1000.0], amplitude=0.4))
    with MediaReader(path) as r:
        assert r.info.audio.start == pytest.approx(2.0, abs=0.1)  # AAC priming: up to 1024 samples early
        assert np.all(r.audio(0.0, 1.0) == 0) and r.audio(0.0, 1.0).shape == (16000,)
        across = r.audio(1.5, 2.5)
        assert np.abs(across[:7000]).max() < 1e-3 and np.abs(across[9000:]).max() > 0.3  # AAC priming is ~1e-4
        assert [frame_index(f) for f in r.frames([0.5, 1.5])] == [12, 37]


def test_the_main_streams_are_read(tmp_path):
    """A small side stream first and the main one marked default, with cover art larger than both (MP4 keeps its
    attached_pic mark): the default video and audio streams are decoded; without a default mark (Matroska), the
    largest; an MP3 whose only picture is its cover art has no video stream."""
    from mbt.data.synthetic import index_frame, write_streams

    def side(i, t, size):
        return index_frame(200, t, size)

    videos = [((16, 32), side, False), ((48, 64), index_frame, True)]
    audios = [(tone_schedule([300.0]), "mono", False), (tone_schedule([1000.0]), "stereo", True)]
    for name, default in (("default.mp4", True), ("largest.mkv", False)):
        v = [(s, fn, d and default) for s, fn, d in videos]
        a = [(fn, layout, d and default) for fn, layout, d in audios]
        path = write_streams(tmp_path / name, videos=v, audios=a, cover=default)
        with av.open(str(path)) as c:  # what the file holds: the side streams come first
            assert [s.type for s in c.streams][:2] == ["video", "video"]
        with MediaReader(path) as r:
            assert (r.info.video.height, r.info.video.width, r.info.video.fps) == (48, 64, 25.0)
            assert [frame_index(f) for f in r.frames([0.5, 1.0])] == [12, 25]
            assert r.info.audio.channels == 2
            assert dominant_frequency(r.audio(0.5, 1.5), 16000) == pytest.approx(1000.0, rel=0.02)
    mp3 = write_streams(tmp_path / "song.mp3", audios=[(tone_schedule([1000.0]), "mono", True)], cover=True)
    info = probe(mp3)
    assert info.video is None and info.audio.duration == pytest.approx(2.0, abs=0.1)


def nan_wav(path, nan_from: float = 0.5, nan_to: float = 0.6, duration: float = 2.0):
    """A float WAV (pcm_f32le) holding a 440 Hz tone with NaN samples in [nan_from, nan_to) and one inf."""
    def fn(t):
        x = 0.3 * np.sin(2 * np.pi * 440.0 * t)
        x[(t >= nan_from) & (t < nan_to)] = np.nan
        x[min(np.searchsorted(t, nan_to + 0.1), t.size - 1)] = np.inf
        return x.astype(np.float32)[None]
    return write_media(path, duration=duration, video=False, audio_codec="pcm_f32le", audio_fn=fn)


def test_non_finite_samples_are_refused_by_name(tmp_path):
    """NaN/inf samples in the decoded window are an error naming the file and where; a window without them reads."""
    from mbt.data import DataConfig, Skipped, VideoDataset
    from mbt.data.annotations import Annotations, Record

    path = nan_wav(tmp_path / "nan.wav")
    with MediaReader(path) as r:
        assert np.isfinite(r.audio(1.0, 2.0)).all()
        with pytest.raises(MediaError, match=r"nan.wav: 1601 non-finite audio samples \(NaN or inf\) in 0.00-1.00 s, "
                                             r"the first at 0.50 s"):
            r.audio(0.0, 1.0)
    ann = Annotations([Record(str(path), (0,))], ["a"], multi_label=False, source="t")
    data = DataConfig(modalities=("spectrogram",), spec_frames=100)
    sample = VideoDataset(ann, data, split="val", on_error="skip")[0]
    assert isinstance(sample, Skipped) and "non-finite audio samples" in sample.reason


@pytest.mark.parametrize("degrees, hflip", [(90, False), (180, False), (270, False), (0, True), (90, True)])
def test_phone_videos_are_upright(degrees, hflip, tmp_path):
    """A display matrix (rotation counter-clockwise, then a mirror) is applied: the decoded frames equal the coded
    frames turned with numpy (np.rot90, then a left-right flip), sizes swap for quarter turns, and a block that
    moves right in the coded frames moves along the turned axis."""
    def moving(i, t, size):
        h, w = size
        img = np.zeros((h, w, 3), np.uint8)
        img[:12, :16] = (255, 0, 0)  # a red corner, top left
        img[20:32, 4 * i:4 * i + 12] = (0, 0, 255)  # a blue block moving right, 4 px a frame
        return img

    def shown(img):  # the display transform, by its definition
        out = np.rot90(img, degrees // 90)
        return out[:, ::-1] if hflip else out

    path = write_media(tmp_path / "phone.mp4", duration=0.4, size=(48, 64), frame_fn=moving, audio=False,
                       video_codec="libx264", pix_fmt="yuv444p", display_rotation=(degrees, hflip))
    with MediaReader(path) as r:
        quarter = degrees % 180 == 90
        assert (r.info.video.height, r.info.video.width) == ((64, 48) if quarter else (48, 64))
        frames = r.frames([(i + 0.5) / 25 for i in range(6)])
        half = r.frames([0.02], size=(32, 24) if quarter else (24, 32))  # a resize is in display orientation
    for i, got in enumerate(frames):
        want = shown(moving(i, 0.0, (48, 64)))
        assert got.shape == want.shape
        assert np.abs(got.astype(int) - want).mean() < 6  # lossy H.264
    assert half.shape[1:3] == ((32, 24) if quarter else (24, 32))
    blue = [np.argwhere(f[..., 2] > 128).mean(0) for f in frames]  # (y, x) centroids over time
    moved = blue[-1] - blue[0]
    expected = shown(np.arange(64)[None, :, None].repeat(48, 0)).squeeze(-1)  # coded x in display coordinates
    axis = 0 if quarter else 1
    sign = np.sign(np.diff(expected, axis=axis).mean())
    assert abs(moved[axis]) > 15 and np.sign(moved[axis]) == sign and abs(moved[1 - axis]) < 2


@pytest.mark.parametrize("audio_lead", [0.0, 0.5])
def test_mpegts_timestamps_that_wrap_and_start_negative(audio_lead, tmp_path):
    """MPEG-TS timestamps wrap at 2^33 / 90 kHz (about 26.5 h): streams that start 1 s before the wrap (FFmpeg then
    gives them negative start times), the audio possibly earlier than the video. Each second's tone and each frame
    are where the streams' own timestamps put them (an earlier reader returned frame 32 at 0.5 s here)."""
    wrap = 2**33 / 90000
    path = write_media(tmp_path / "wrap.ts", duration=3.0, audio_fn=tone_schedule(FREQS[:3]),
                       video_start=wrap - 1.0, audio_start=wrap - 1.0 - audio_lead)
    with av.open(str(path)) as c:
        assert min(s.start_time for s in c.streams) < 0  # what the demuxer makes of the wrap
    with MediaReader(path) as r:
        v, a = r.info.video, r.info.audio
        assert v.start - a.start == pytest.approx(audio_lead, abs=0.1)
        idx = [2, 12, 37, 60]
        assert [frame_index(f) for f in r.frames([v.start + (i + 0.5) / 25 for i in idx])] == idx
        for second in range(3):
            wave = r.audio(a.start + second + 0.1, a.start + second + 0.9)
            assert dominant_frequency(wave, 16000) == pytest.approx(FREQS[second], rel=0.03)


def test_an_audio_track_shifted_earlier_is_read(tmp_path):
    """Audio written 0.5 s before the video's time 0 (negative timestamps: the MP4 muxer keeps the file at 0 with an
    edit list that drops the early part): the audio is read, each tone where the shifted track puts it."""
    from fractions import Fraction

    from mbt.data.synthetic import index_frame

    path = tmp_path / "shifted.mp4"
    with av.open(str(path), "w", options={"avoid_negative_ts": "disabled"}) as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        audio = c.add_stream("aac", rate=16000, layout="mono")
        for i in range(75):
            frame = av.VideoFrame.from_ndarray(index_frame(i, i / 25, (48, 64)), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            c.mux(vs.encode(frame))
        c.mux(vs.encode())
        x = tone_schedule(FREQS[:3])(np.arange(48000) / 16000).astype(np.float32)
        for s in range(0, 48000, 4096):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, s:s + 4096]), format="fltp", layout="mono")
            frame.sample_rate, frame.time_base, frame.pts = 16000, Fraction(1, 16000), s - 8000  # 0.5 s early
            c.mux(audio.encode(frame))
        c.mux(audio.encode())
    with MediaReader(path) as r:
        assert r.info.audio.duration == pytest.approx(2.5, abs=0.1)
        for k, (t0, t1) in enumerate([(0.0, 0.4), (0.6, 1.4), (1.6, 2.4)]):  # source seconds 0.5-0.9, 1.1-1.9, ...
            assert dominant_frequency(r.audio(t0, t1), 16000) == pytest.approx(FREQS[k], rel=0.03)
        assert [frame_index(f) for f in r.frames([0.02, 1.02])] == [0, 25]


def test_audio_after_a_timestamp_gap_is_placed_by_its_timestamps(tmp_path):
    """An audio stream whose timestamps jump 0.5 s at 1.5 s (a pause in a recording, or packets lost): the gap is
    silence and what follows plays at its timestamps, as FFmpeg places it, whatever window is read."""
    import av

    path = tmp_path / "gap.mkv"
    sr, n = 16000, 1024
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=sr)
        s.layout = "mono"
        for k in range(int(4.0 * sr / n)):
            t0 = k * n / sr
            pts = k * n + (sr // 2 if t0 >= 1.5 else 0)  # timestamps 0.5 s later from 1.5 s on
            t = (pts + np.arange(n)) / sr
            tone = 0.5 * np.sin(2 * np.pi * np.array([FREQS[int(x)] for x in t]) * t)
            frame = av.AudioFrame.from_ndarray((tone * 32767).astype(np.int16)[None], format="s16", layout="mono")
            frame.sample_rate, frame.pts = sr, pts
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    for start in (0.0, 1.0, 2.2):  # windows from before, at and after the gap: the same placement
        with MediaReader(path) as r:
            wave = r.audio(start, 4.4)
        at = lambda a, b: wave[int((a - start) * 16000): int((b - start) * 16000)]  # noqa: E731
        if start < 1.5:
            assert dominant_frequency(at(1.1, 1.45), 16000) == pytest.approx(FREQS[1], rel=0.03)
            assert np.abs(at(1.55, 1.95)).max() < 1e-3  # the gap: silence
        assert dominant_frequency(at(max(2.05, start), 2.95), 16000) == pytest.approx(FREQS[2], rel=0.03)
        assert dominant_frequency(at(3.05, 3.95), 16000) == pytest.approx(FREQS[3], rel=0.03)


def test_finite_samples_whose_features_overflow_are_refused_by_name(tmp_path):
    """A float WAV of a tone at 1e20 (finite samples whose power overflows float32): the clip is skipped by name,
    not turned into NaN scores or statistics."""
    from mbt.data import DataConfig, Skipped, VideoDataset
    from mbt.data.annotations import Annotations, Record

    path = write_media(tmp_path / "huge.wav", duration=1.0, video=False, audio_codec="pcm_f32le",
                       audio_fn=lambda t: (1e20 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[None])
    ann = Annotations([Record(str(path), (0,))], ["a"], multi_label=False, source="t")
    sample = VideoDataset(ann, DataConfig(modalities=("spectrogram",), spec_frames=100), split="val",
                          on_error="skip")[0]
    assert isinstance(sample, Skipped) and "non-finite spectrogram features (samples up to 1e+20" in sample.reason


def test_audio_that_decodes_after_its_declared_start(tmp_path):
    """WMA in ASF: the stream says it starts at 0 but its first frame decodes later. A window that ends before that
    first sample is silence of the right length (it was a 'negative dimensions' error), and the tones are placed."""
    import av

    path, sr, n = tmp_path / "clip.wmv", 44100, 2048
    with av.open(str(path), "w") as c:
        s = c.add_stream("wmav2", rate=sr)
        s.layout, s.bit_rate = "stereo", 128000
        for k in range(int(4 * sr / n)):
            t = (k * n + np.arange(n)) / sr
            x = (0.4 * np.sin(2 * np.pi * np.array([FREQS[int(v)] for v in t]) * t)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.stack([x, x]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = sr, k * n
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    with MediaReader(path) as r:
        for start, end in ((0.0, 0.05), (0.0, 0.01)):
            assert r.audio(start, end).shape == (int(round((end - start) * 16000)),)
        for second in (0, 1, 2, 3):
            wave = r.audio(second + 0.15, second + 0.9)
            assert dominant_frequency(wave, 16000) == pytest.approx(FREQS[second], rel=0.03)
