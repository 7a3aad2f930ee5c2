"""Files as they come from the wild: streams of different lengths or start times, containers without per-stream
durations, format changes inside a stream, seeks that land late, and errors nobody foresaw."""

from __future__ import annotations

import numpy as np
import pytest

from mbt.data import DataConfig, MediaReader, SkipReport, Skipped, VideoDataset, make_loader, read_csv
from mbt.data.synthetic import frame_index, tone_schedule, write_media

SMALL = dict(num_frames=8, stride=2, min_resize=48, crop_size=(48, 48), spec_frames=400, num_test_clips=3)


def dataset(folder, names, split, on_error=None, **changes):
    (folder / "l.csv").write_text("path,label\n" + "".join(f"{n},x\n" for n in names))
    return VideoDataset(read_csv(folder / "l.csv"), DataConfig(**{**SMALL, **changes}), split=split,
                        on_error=on_error)


@pytest.mark.parametrize("ext", ["mkv", "webm"])
def test_audio_shorter_than_video_in_containers_without_stream_durations(tmp_path, ext):
    """Matroska and WebM state one duration, the longest stream's: each stream's own end is measured."""
    codecs = dict(video_codec="libvpx-vp9", audio_codec="libopus", sample_rate=48000) if ext == "webm" else {}
    write_media(tmp_path / f"a.{ext}", duration=10.0, audio_duration=9.8, size=(48, 64), **codecs)
    with MediaReader(tmp_path / f"a.{ext}") as r:
        assert r.info.video.duration == pytest.approx(10.0, abs=0.05)
        assert r.info.audio.duration == pytest.approx(9.8, abs=0.1)
    test = dataset(tmp_path, [f"a.{ext}"], "test", on_error="raise")[0]
    assert test["spectrogram"].shape == (3, 1, 400, 128)
    train = dataset(tmp_path, [f"a.{ext}"], "train")
    for epoch in range(8):  # 4 s windows in 9.8 s of audio: many wrap around the end
        train.set_epoch(epoch)
        assert not isinstance(train[0], Skipped), train[0]


def test_truncated_matroska_is_still_an_error(tmp_path):
    src = write_media(tmp_path / "src.mkv", duration=10.0, size=(48, 64))
    data = src.read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 3])
    s = dataset(tmp_path, ["cut.mkv"], "test", on_error="skip")[0]
    assert isinstance(s, Skipped) and "truncated or damaged" in s.reason


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_video_starting_after_the_audio_keeps_the_audio_start(tmp_path, ext):
    write_media(tmp_path / f"v.{ext}", duration=3.0, video_start=0.48, audio_fn=tone_schedule([500.0]))
    with MediaReader(tmp_path / f"v.{ext}") as r:
        a = r.audio(0.0, 1.0)
        assert np.abs(a[:1600]).max() > 0.3, "the first 0.1 s of audio is there, not silence"
        f = r.frames([0.0, 0.5, 1.0])  # before the first frame, the first frame stands in
        assert [frame_index(x) for x in f] == [0, 0, 13]
    s = dataset(tmp_path, [f"v.{ext}"], "test", on_error="raise")[0]
    assert s["rgb"].shape[0] == 3


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_audio_starting_after_the_video_is_silence_before(tmp_path, ext):
    write_media(tmp_path / f"a.{ext}", duration=3.0, audio_start=0.24, audio_fn=tone_schedule([500.0]))
    with MediaReader(tmp_path / f"a.{ext}") as r:
        a = r.audio(0.0, 1.0)
    onset = np.argmax(np.abs(a) > 0.05) / 16000
    assert onset == pytest.approx(0.24, abs=0.02)
    for split in ("val", "test"):
        dataset(tmp_path, [f"a.{ext}"], split, on_error="raise")[0]


def test_mpeg_ts_seeks_to_the_end(tmp_path):
    """MPEG-TS seeks land after the target; decoding then backs off and retries. (The muxer starts the video a
    little after the audio: frame k is at video.start + k / 25 on the file's common time line.)"""
    path = write_media(tmp_path / "a.ts", duration=10.0, size=(48, 64))
    with MediaReader(path) as r:
        start = r.info.video.start
        assert 0 < start < 0.2

        def expected(times):
            return [max(0, min(249, int(np.floor((t - start) * 25 + 1e-6)))) for t in times]

        for times in ([9.8], [0.0, 0.04, 9.96], [5.0, 9.99]):
            assert [frame_index(x) for x in r.frames(times)] == expected(times)


def test_audio_format_change_inside_a_stream(tmp_path):
    """Two MPEG-TS files joined: the audio switches from 16 kHz mono to 48 kHz stereo part-way."""
    a = write_media(tmp_path / "a.ts", duration=2.0, size=(48, 64), audio_fn=tone_schedule([500.0]))
    b = write_media(tmp_path / "b.ts", duration=2.0, size=(48, 64), sample_rate=48000, layout="stereo",
                    audio_fn=tone_schedule([1500.0]))
    (tmp_path / "cat.ts").write_bytes(a.read_bytes() + b.read_bytes())
    with MediaReader(tmp_path / "cat.ts") as r:
        join = r.info.audio.start + 2.0
        wave = r.audio(join - 1.0, join + 1.0)  # across the join
    assert wave.shape == (32000,)
    for segment, freq in ((wave[4000:12000], 500.0), (wave[20000:28000], 1500.0)):
        spectrum = np.abs(np.fft.rfft(segment))
        assert np.argmax(spectrum) * 16000 / len(segment) == pytest.approx(freq, abs=5)
    s = dataset(tmp_path, ["cat.ts"], "val", spec_frames=300, on_error="raise")[0]  # 3 s around the middle
    assert s["spectrogram"].shape == (1, 300, 128)


def test_unforeseen_errors_are_skipped_not_fatal(tmp_path, monkeypatch):
    write_media(tmp_path / "a.mp4", duration=1.0)
    data = dataset(tmp_path, ["a.mp4"], "train", spec_frames=50)

    def broken(self, *args, **kwargs):
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(MediaReader, "frames", broken)
    s = data[0]
    assert isinstance(s, Skipped) and s.reason == "unexpected RuntimeError: something nobody expected"
    strict = dataset(tmp_path, ["a.mp4"], "val", spec_frames=50)
    with pytest.raises(Exception, match="a.mp4: unexpected RuntimeError: something nobody expected"):
        strict[0]
    report = SkipReport()
    report.update(next(iter(make_loader(data, batch_size=1, drop_last=False))))
    assert "1 x unexpected RuntimeError" in report.summary()


def test_audio_window_wraps_exactly_at_the_clip_end(tmp_path):
    """The waveform under a wrapped spectrogram window is the clip's audio taken modulo its length."""
    write_media(tmp_path / "w.mp4", duration=3.0, audio_fn=tone_schedule([300.0 + 200 * k for k in range(12)], 0.25))
    data = dataset(tmp_path, ["w.mp4"], "val", spec_frames=250)
    hop = 160
    with MediaReader(tmp_path / "w.mp4") as r:
        length = 300  # spectrogram frames in 3 s
        whole = r.audio(0.0, length * hop / 16000)
        for offset in (120, 250, 299):
            wave = data._waveform(r, 0.0, offset, length).numpy()
            expected = np.take(whole, np.arange(offset * hop, offset * hop + data.config.window_samples()) % (length * hop))
            np.testing.assert_allclose(wave, expected, atol=2e-3)
