"""The whole pipeline on generated files with known content: which frames are sampled, whether audio and video
line up, where the spectrogram peak sits, and what happens with every kind of bad file."""

from __future__ import annotations

import math
import signal

import numpy as np
import pytest
import torch

from mbt import MBT, MBTConfig
from mbt.cli import main
from mbt.data import (AugmentConfig, DataConfig, FrontEndConfig, MediaError, MediaReader, SkipReport, Skipped,
                      VideoDataset, collate, make_loader, read_csv)
from mbt.data.audio import AudioFrontEnd
from mbt.data.sampling import middle_offset, multi_clip_offsets
from mbt.data.stats import compute_stats
from mbt.data.synthetic import frame_index, tone_schedule, write_media

SEG = 0.25  # the test tone changes frequency every 0.25 s
FREQS = [400.0 + 175.0 * k for k in range(41)]  # 400 .. 7400 Hz over 10.25 s, each in its own mel bin


def tone_at(t: float) -> float:
    return FREQS[min(int(t / SEG + 1e-9), len(FREQS) - 1)]


def mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)


def expected_bin(freq: float, fe: FrontEndConfig) -> int:
    """The mel bin whose centre is nearest the frequency (Kaldi mel banks, closed form)."""
    lo, hi = mel(fe.low_freq), mel(fe.high_freq)
    centres = lo + (np.arange(fe.num_mel_bins) + 1) * (hi - lo) / (fe.num_mel_bins + 1)
    return int(np.argmin(np.abs(centres - mel(freq))))


def small_config(**changes) -> DataConfig:
    base = dict(num_frames=8, stride=2, min_resize=48, crop_size=(48, 48), spec_frames=200, num_test_clips=3,
                front_end=FrontEndConfig.preset("logmel"))
    base.update(changes)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    write_media(d / "long.mp4", duration=10.0, size=(48, 64), audio_fn=tone_schedule(FREQS, SEG))
    write_media(d / "short.mp4", duration=3.0, size=(48, 64), audio_fn=tone_schedule(FREQS, SEG))
    (d / "list.csv").write_text("path,label\nlong.mp4,a\nshort.mp4,b\n")
    return d


def rgb_indices(rgb: torch.Tensor) -> list[int]:
    """Source frame indices of a (3, T, H, W) clip in [-1, 1]."""
    frames = ((rgb.permute(1, 2, 3, 0) + 1) * 127.5).numpy()
    return [frame_index(f) for f in frames]


def spec_peaks(spec: torch.Tensor) -> np.ndarray:
    return spec[0].argmax(-1).numpy()  # (time,) peak mel bin per frame


def window_start_from_audio(spec: torch.Tensor, fe: FrontEndConfig) -> float:
    """The clip time of the first spectrogram frame, read from the tone: the first frame whose peak is in the next
    segment's bin (for 3 frames in a row) has its centre just past that segment's start."""
    segment_of_bin = {expected_bin(f, fe): k for k, f in enumerate(FREQS)}
    seg = [segment_of_bin.get(int(b), -1) for b in spec_peaks(spec)]
    before = None  # the last recognised tone
    for j in range(len(seg) - 3):
        if seg[j] != -1 and seg[j] == seg[j + 1] == seg[j + 2]:
            if before is not None and seg[j] != before:
                return seg[j] * SEG - (j * 0.01 + 0.0125)
            before = seg[j]
    raise AssertionError(f"no tone change found in {seg}")


def test_val_takes_the_middle_window(clips):
    ann = read_csv(clips / "list.csv")
    cfg = small_config()
    s = VideoDataset(ann, cfg, split="val")[0]
    assert s["rgb"].shape == (3, 8, 48, 48) and s["spectrogram"].shape == (1, 200, 128)
    o = middle_offset(250, 8, 2)
    assert rgb_indices(s["rgb"]) == [o + 2 * k for k in range(8)]
    o_spec = middle_offset(1000, 200, 1)  # 400: the window covers 4.0 s .. 6.0 s
    peaks = spec_peaks(s["spectrogram"])
    for j in (5, 60, 120, 190):
        t = (o_spec + j) / 100 + 0.0125  # the frame's centre
        if abs(t / SEG - round(t / SEG)) > 0.03:  # not on a boundary
            assert peaks[j] == expected_bin(tone_at(t), cfg.front_end), j
    assert not s["missing"]["rgb"] and not s["missing"]["spectrogram"]


def test_test_split_gives_paired_evenly_spaced_clips(clips):
    ann = read_csv(clips / "list.csv")
    cfg = small_config()
    s = VideoDataset(ann, cfg, split="test")[0]
    assert s["rgb"].shape == (3, 3, 8, 48, 48) and s["spectrogram"].shape == (3, 1, 200, 128)
    rgb_offsets, spec_offsets = multi_clip_offsets(250, 8, 2, 3), multi_clip_offsets(1000, 200, 1, 3)
    for i in range(3):
        assert rgb_indices(s["rgb"][i]) == [rgb_offsets[i] + 2 * k for k in range(8)]
        start = window_start_from_audio(s["spectrogram"][i], cfg.front_end)
        assert abs(start - spec_offsets[i] / 100) < 0.011


@pytest.mark.parametrize("epoch", range(6))
def test_train_windows_of_audio_and_video_line_up(clips, epoch):
    ann = read_csv(clips / "list.csv")
    cfg = small_config(augment=AugmentConfig(scale_jitter=None, flip=False, color_augment_prob=0.0,
                                             color_drop_prob=0.0, freq_mask_count=0))
    data = VideoDataset(ann, cfg, split="train", seed=3)
    data.set_epoch(epoch)
    s = data[0]
    idx = rgb_indices(s["rgb"])
    assert idx == [idx[0] + 2 * k for k in range(8)] and 0 <= idx[0] < 250 - 14
    video_start = idx[0] / 25
    audio_start = window_start_from_audio(s["spectrogram"], cfg.front_end)
    assert abs(audio_start - video_start) <= 1 / 25 + 1e-6, (audio_start, video_start)


def test_windows_past_the_end_wrap_around(clips):
    """A 3 s clip: the 2 s spectrogram window of the last test clip starts at 1 s; a train window near the end
    wraps to the clip start. The rgb window (8 frames at stride 2) wraps too."""
    ann = read_csv(clips / "list.csv")
    cfg = small_config(spec_frames=250, num_frames=40,  # 2.5 s of audio, 80 frames of video in a 3 s clip
                       augment=AugmentConfig(scale_jitter=None, flip=False, color_augment_prob=0.0,
                                             color_drop_prob=0.0, freq_mask_count=0))
    data = VideoDataset(ann, cfg, split="train", seed=0)
    for epoch in range(10):
        data.set_epoch(epoch)
        s = data[1]
        idx = rgb_indices(s["rgb"])
        assert idx == [(idx[0] + 2 * k) % 75 for k in range(40)]
        if idx[0] + 2 * 39 >= 75:
            break
    else:
        pytest.fail("no wrapped rgb window in 10 epochs")
    o_spec = round(idx[0] / 75 * 300)
    peaks = spec_peaks(s["spectrogram"])
    for j in range(0, 250, 7):
        t = ((o_spec + j) % 300) / 100 + 0.0125
        if abs(t / SEG - round(t / SEG)) > 0.04 and (o_spec + j) % 300 < 297:
            assert peaks[j] == expected_bin(tone_at(t), cfg.front_end), (j, t)


def test_augmentation_only_in_training_and_reproducible(clips):
    ann = read_csv(clips / "list.csv")
    cfg = small_config()
    val = VideoDataset(ann, cfg, split="val")
    assert torch.equal(val[0]["rgb"], val[0]["rgb"])
    train = VideoDataset(ann, cfg, split="train", seed=1)
    a, b = train[0], train[0]
    assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["spectrogram"], b["spectrogram"])
    train.set_epoch(1)
    assert not torch.equal(a["rgb"], train[0]["rgb"])
    assert (a["spectrogram"] == 0).all(dim=1).any(), "SpecAugment masked some mel bins"


def test_loader_with_workers_gives_the_same_batches(clips):
    ann = read_csv(clips / "list.csv")
    cfg = small_config()
    for split in ("val", "train"):
        data = VideoDataset(ann, cfg, split=split, seed=2)
        b0 = next(iter(make_loader(data, batch_size=2, num_workers=0, shuffle=False)))
        b2 = next(iter(make_loader(data, batch_size=2, num_workers=2, shuffle=False)))
        assert b0["size"] == b2["size"] == 2
        for key in ("rgb", "spectrogram", "label"):
            # same samples; workers run torch with 1 thread, whose float reductions may round differently
            torch.testing.assert_close(b0[key], b2[key], rtol=0, atol=1e-5, msg=f"{split} {key}")
    assert b0["rgb"].shape == (2, 3, 8, 48, 48) and b0["spectrogram"].shape == (2, 1, 200, 128)
    assert b0["label"].tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_batches_feed_the_model(clips):
    ann = read_csv(clips / "list.csv")
    cfg = small_config()
    model_config = MBTConfig(num_frames=8, image_size=(48, 48), rgb_patch_size=(2, 16, 16),
                             spectrogram_shape=(200, 128), spectrogram_patch_size=(16, 16), hidden_size=32,
                             num_heads=2, num_layers=2, mlp_dim=64, fusion_layer=1, num_classes=2)
    cfg.check_model(model_config)
    batch = next(iter(make_loader(VideoDataset(ann, cfg, split="val"), batch_size=2)))
    out = MBT(model_config).eval()(batch)
    assert out.logits.shape == (2, 2)


# ---------------------------------------------------------------------------------------------------- bad input
BAD = {
    # name: (how to make it, outcome): "ok" loads, "flag:<m>" loads with that modality flagged missing,
    # "error:<text>" is a MediaError whose message contains the text.
    "missing.mp4": (None, "error:no such file"),
    "empty.mp4": (lambda p: p.write_bytes(b""), "error:empty file"),
    "text.mp4": (lambda p: p.write_text("hello\n" * 50), "error:not a media file"),
    "truncated.mkv": ("truncated", "error:truncated or damaged"),
    "no_audio.mp4": (dict(audio=False), "flag:spectrogram"),
    "no_video.m4a": (dict(video=False), "flag:rgb"),
    "short.mp4": (dict(duration=0.5), "ok"),
    "one_frame.mp4": (dict(duration=0.04, audio=False), "flag:spectrogram"),
    "gray.mkv": (dict(video_codec="ffv1", pix_fmt="gray"), "ok"),
    "8k.mp4": (dict(sample_rate=8000), "ok"),
    "48k.mp4": (dict(sample_rate=48000), "ok"),
    "six_channels.mp4": (dict(layout="5.1"), "ok"),
    "odd_size.mp4": (dict(size=(37, 51), pix_fmt="yuv444p"), "ok"),
}


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    for name, (make, _) in BAD.items():
        path = d / name
        if make is None:
            continue
        if make == "truncated":
            src = write_media(d / "src.mkv", duration=6.0, size=(48, 64))
            data = src.read_bytes()
            path.write_bytes(data[: len(data) // 3])
            src.unlink()
        elif callable(make):
            make(path)
        else:
            write_media(path, **{"duration": 2.0, "size": (48, 64), **make})
    rows = "\n".join(f"{name},x" for name in BAD)
    (d / "list.csv").write_text(f"path,label\n{rows}\n")
    return d


def bad_annotations(d):
    ann = read_csv(d / "list.csv")
    assert ann.missing_files == ["missing.mp4"]  # found when reading the annotations...
    # ... and a file that disappears after that is an error when loading: keep it in the records.
    from mbt.data.annotations import Record

    ann.records.append(Record(str(d / "missing.mp4"), (0,), None, None, "missing.mp4"))
    return ann


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_input_has_its_documented_outcome(bad_dir, name):
    ann = bad_annotations(bad_dir)
    index = next(i for i, r in enumerate(ann.records) if r.path.endswith(name))
    outcome = BAD[name][1]
    cfg = small_config(spec_frames=100)
    for split in ("val", "train"):
        raising = VideoDataset(ann, cfg, split=split, on_error="raise")
        skipping = VideoDataset(ann, cfg, split=split, on_error="skip")
        if outcome.startswith("error:"):
            with pytest.raises(MediaError, match=outcome[6:]) as e:
                raising[index]
            assert str(e.value).startswith(str(bad_dir / name))
            s = skipping[index]
            assert isinstance(s, Skipped) and s.path.endswith(name) and outcome[6:] in s.reason
            continue
        s = raising[index]
        assert s["rgb"].shape == (3, 8, 48, 48) and s["spectrogram"].shape == (1, 100, 128)
        assert torch.isfinite(s["rgb"]).all() and torch.isfinite(s["spectrogram"]).all()
        missing = outcome[5:] if outcome.startswith("flag:") else None
        assert s["missing"] == {"spectrogram": missing == "spectrogram", "rgb": missing == "rgb"}
        if missing == "spectrogram":  # silence, through the same front end
            silence = AudioFrontEnd(cfg.front_end)(torch.zeros(cfg.window_samples()))
            if split == "val":
                assert torch.equal(s["spectrogram"], silence)
        elif missing == "rgb":
            assert (s["rgb"] == 0).all()
        else:
            assert s["rgb"].std() > 0 or name == "gray.mkv"
    if outcome.startswith("flag:"):  # with missing_stream='error' the same file is an error instead
        strict = VideoDataset(ann, small_config(spec_frames=100, missing_stream="error"), split="val")
        with pytest.raises(MediaError, match="no audio stream" if outcome == "flag:spectrogram" else "no video stream"):
            strict[index]


def test_gray_video_has_equal_channels(bad_dir):
    ann = bad_annotations(bad_dir)
    index = next(i for i, r in enumerate(ann.records) if r.path.endswith("gray.mkv"))
    rgb = VideoDataset(ann, small_config(spec_frames=100), split="val")[index]["rgb"]
    assert torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[1], rgb[2])


def test_a_long_run_skips_counts_and_reports_bad_files(bad_dir):
    signal.alarm(300)  # a hang in the workers fails the test instead of stalling the run
    try:
        _long_run(bad_dir)
    finally:
        signal.alarm(0)


def _long_run(bad_dir):
    ann = bad_annotations(bad_dir)
    data = VideoDataset(ann, small_config(spec_frames=100), split="train")  # on_error='skip' by default
    report = SkipReport()
    total = 0
    for batch in make_loader(data, batch_size=4, num_workers=2, shuffle=False, drop_last=False):
        report.update(batch)
        total += batch["size"]
    errors = [n for n, (_, o) in BAD.items() if o.startswith("error:")]
    assert len(report.skipped) == len(errors) and total == len(BAD) - len(errors)
    summary = report.summary()
    assert summary.startswith(f"skipped {len(errors)} of {len(BAD)} samples")
    for name in errors:
        assert name in summary


def test_collate_drops_skipped_samples():
    sample = {"rgb": torch.zeros(3, 2, 4, 4), "spectrogram": torch.zeros(1, 5, 3), "label": torch.zeros(2),
              "missing": {"rgb": False, "spectrogram": True}, "index": 0, "path": "a"}
    batch = collate([sample, Skipped(1, "b", "empty file"), sample])
    assert batch["size"] == 2 and batch["rgb"].shape == (2, 3, 2, 4, 4)
    assert batch["missing"]["spectrogram"].tolist() == [True, True] and len(batch["skipped"]) == 1
    assert collate([Skipped(1, "b", "empty file")]) == {"skipped": [Skipped(1, "b", "empty file")], "size": 0}


# ---------------------------------------------------------------------------------------------------- stats
def test_compute_stats_equals_a_direct_computation(clips):
    ann = read_csv(clips / "list.csv")
    cfg = small_config(front_end=FrontEndConfig.preset("logmel", mean=3.0, std=7.0))
    stats = compute_stats(ann, cfg, progress=False)
    raw = AudioFrontEnd(FrontEndConfig.preset("logmel"))
    values = []
    for record, seconds in zip(ann.records, (10.0, 3.0)):
        length = math.floor(seconds * 100 + 1e-6)
        start = middle_offset(length, 200, 1) / 100
        with MediaReader(record.path) as r:
            wave = r.audio(start, start + cfg.window_samples() / 16000)
        values.append(raw.features(torch.from_numpy(wave)).double().flatten())
    v = torch.cat(values)
    assert stats.num_clips == 2 and stats.num_values == v.numel()
    assert stats.mean == pytest.approx(v.mean().item(), abs=1e-4)
    assert stats.std == pytest.approx(v.std(unbiased=False).item(), abs=1e-4)


def test_mbt_stats_command(clips, tmp_path, capsys):
    out = tmp_path / "pre.json"
    assert main(["stats", str(clips / "list.csv"), "--spec-frames", "200", "--write-config", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("mean ") and "(2 clips" in printed
    written = DataConfig.from_dict(__import__("json").loads(out.read_text()))
    assert written.front_end.mean == pytest.approx(float(printed.split()[1]), abs=1e-5)
    assert main(["stats", str(tmp_path / "nope.csv")]) == 1
    assert "nope.csv: no such annotation file" in capsys.readouterr().err


def test_data_config_lives_in_the_model_directory(tmp_path):
    model = MBT(MBTConfig(num_frames=8, image_size=(48, 48), rgb_patch_size=(2, 16, 16), spectrogram_shape=(200, 64),
                          spectrogram_patch_size=(16, 16), hidden_size=32, num_heads=2, num_layers=2, mlp_dim=64,
                          fusion_layer=1, num_classes=2))
    cfg = DataConfig.for_model(model.config, front_end=FrontEndConfig.preset("kaldi_fbank", num_mel_bins=64))
    model.save_pretrained(tmp_path / "m", data_config=cfg)
    assert DataConfig.from_pretrained(tmp_path / "m") == cfg
    with pytest.raises(Exception, match="MBTConfig.num_frames = 8 but DataConfig.num_frames = 16"):
        DataConfig(num_frames=16, crop_size=(48, 48), spec_frames=200).check_model(model.config)
