"""AV-Digits generator (mbt.avdigits.generator): reproducibility, disjoint splits, and clip content checked against the
per-clip ground truth (metadata boxes, word span, MNIST image, an independent eSpeak NG synthesis of each digit)."""

from __future__ import annotations

import csv
import filecmp
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from mbt.avdigits import generator as avd
from mbt.avdigits.generator import AVDigitsConfig, AVDigitsError, generate, image_pools, make_clip, mnist_digits, voice_pools
from mbt.avdigits.speech import ACCENTS, DIGIT_WORDS, speaker, variants

SR = 22050
BACKGROUND = 0.35 * 255  # flat grey of a frame without texture
# Every video distractor and the audio background off: the frame is grey plus the digit, the audio the word alone.
CLEAN = dict(texture=0, distractors=0, occluder=0, blur=0, noise=0, audio_background=False)
DEFAULT = AVDigitsConfig(train_clips=6, test_clips=4, seed=5)  # default difficulty: textures, babble, ...


# ------------------------------------------------------------------------------------------------------ helpers
def rows(root: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (root / "metadata" / f"{split}.jsonl").read_text().splitlines()]


def all_rows(root: Path) -> list[dict]:
    return rows(root, "train") + rows(root, "test")


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def decode_video(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def decode_audio(path: Path) -> tuple[np.ndarray, int]:
    """Mono float samples and the pts of the first decoded frame (0 if the priming delay is handled)."""
    with av.open(str(path)) as c:
        frames = list(c.decode(audio=0))
    return np.concatenate([f.to_ndarray() for f in frames], axis=1)[0], frames[0].pts


def span(row: dict) -> tuple[int, int]:
    return int(round(row["speech"]["onset"] * SR)), int(round(row["speech"]["offset"] * SR))


def digit_weight(frame: np.ndarray) -> np.ndarray:
    """How much brighter than the grey background each pixel is (the digit's alpha times a colour constant)."""
    return np.clip(frame.astype(np.float64).mean(axis=2) - BACKGROUND, 0, None)


def resample_matrix(start: float, side: float, n: int = 64) -> np.ndarray:
    """(n, 28) bilinear weights (zero outside the image) putting a 28-pixel line at [start, start + side)."""
    src = (np.arange(n) + 0.5 - start) * avd.DIGIT / side - 0.5  # output pixel centre in source pixel indices
    return np.clip(1 - np.abs(src[:, None] - np.arange(avd.DIGIT)[None]), 0, None)


def _mel_filters(n_fft: int = 1024, n_mels: int = 40, lo: float = 80.0, hi: float = 8000.0) -> np.ndarray:
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    edges = 700 * (10 ** (np.linspace(mel(lo), mel(hi), n_mels + 2) / 2595) - 1)
    freqs = np.fft.rfftfreq(n_fft, 1 / SR)
    return np.stack([np.clip(np.minimum((freqs - a) / (b - a), (c - freqs) / (c - b)), 0, None)
                     for a, b, c in zip(edges, edges[1:], edges[2:])])


MEL = _mel_filters()


def log_mel(x: np.ndarray, win: int = 551, hop: int = 220) -> np.ndarray:
    """(frames, 40) log-mel spectrogram, 25 ms windows every 10 ms."""
    x = np.pad(x, (0, max(0, win - len(x))))
    frames = np.stack([x[i:i + win] * np.hanning(win) for i in range(0, len(x) - win + 1, hop)])
    return np.log(np.abs(np.fft.rfft(frames, 1024)) ** 2 @ MEL.T + 1e-8)


def dtw_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Dynamic time warping of two log-mel sequences, cosine distance between mean-removed frames."""
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-9
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-9
    cost = 1 - a @ b.T
    acc = np.full((len(a) + 1, len(b) + 1), np.inf)
    acc[0, 0] = 0
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    return float(acc[-1, -1] / (len(a) + len(b)))


def synth(word: str, voice: str, rate: int, pitch: int) -> np.ndarray:
    """The word as eSpeak NG says it, leading and trailing silence dropped (as the generator does)."""
    w = speaker().say(word, voice, rate, pitch).astype(np.float32) / 32768
    loud = np.flatnonzero(np.abs(w) > 0.01 * np.abs(w).max())
    return w[loud[0]:loud[-1] + 1]


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def mnist():
    return mnist_digits()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Small datasets shared by the tests: the default config with 1 and 2 workers, another seed, and clean
    (no distractor, no background) sets in both modes."""
    root = tmp_path_factory.mktemp("avdigits")
    made = {
        "w1": (DEFAULT, 1),
        "w2": (DEFAULT, 2),
        "seed6": (AVDigitsConfig(train_clips=6, test_clips=4, seed=6), 1),
        "same": (AVDigitsConfig(mode="same", train_clips=8, test_clips=4, seed=1, **CLEAN), 1),
        "pair": (AVDigitsConfig(mode="pair", train_clips=12, test_clips=8, seed=2, **CLEAN), 1),
    }
    out = {}
    for name, (cfg, workers) in made.items():
        manifest = generate(cfg, root / name, workers=workers, progress=False)
        out[name] = (root / name, cfg, manifest)
    return out


# ------------------------------------------------------------------------------------------------------ 1. determinism
def test_same_seed_gives_byte_identical_files_with_1_or_2_workers(datasets):
    """Same config and seed, workers=1 vs workers=2 in two folders: equal manifest checksums and every file
    (clips, CSVs, metadata, manifest) byte-identical (the manifest promises 'a seed reproduces the files byte for
    byte' and `generate` says the files do not depend on `workers`)."""
    (a, _, ma), (b, _, mb) = datasets["w1"], datasets["w2"]
    assert files(a) == files(b)
    differing = [f for f in files(a) if not filecmp.cmp(a / f, b / f, shallow=False)]
    assert differing == [], f"files differ between workers=1 and workers=2: {differing}"
    assert ma["checksum"] == mb["checksum"]


def test_make_clip_depends_only_on_cfg_split_and_index(tmp_path):
    """make_clip's contract: the same (cfg, split, index) twice in one process gives the same metadata row and the
    same bytes (what byte-for-byte reproducibility rests on)."""
    cfg = AVDigitsConfig(train_clips=2, test_clips=0, seed=7)
    got = []
    for run in ("a", "b"):
        (tmp_path / run / "train").mkdir(parents=True)
        row = make_clip(cfg, "train", 1, tmp_path / run)
        got.append((row, (tmp_path / run / row["file"]).read_bytes()))
    assert got[0][0] == got[1][0]
    assert got[0][1] == got[1][1]


def test_speech_bank_is_built_once_and_reused(tmp_path, monkeypatch):
    """eSpeak NG is not bit-reproducible between processes, so words come from a bank cached on disk: a second
    dataset in another folder (another process state) reuses the file and gives byte-identical clips, and the
    bank's words are the ones eSpeak says for those parameters (same length within a few ms)."""
    monkeypatch.setenv("MBT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(avd, "_SOURCES", None)
    cfg = AVDigitsConfig(train_clips=3, test_clips=1, seed=3, rate=(150, 160))
    ma = generate(cfg, tmp_path / "a", workers=1, progress=False)
    banks = list((tmp_path / "cache").glob("avdigits-speech-*.npz"))
    assert len(banks) == 1
    stamp = banks[0].stat().st_mtime_ns
    monkeypatch.setattr(avd, "_SOURCES", None)  # as a new process: the bank is read back from the file
    mb = generate(cfg, tmp_path / "b", workers=2, progress=False)
    assert banks[0].stat().st_mtime_ns == stamp
    assert ma["checksum"] == mb["checksum"]
    bank = avd._sources(cfg).bank
    voice = voice_pools()["test"][5]
    wave, info = bank.word(7, voice)
    assert 150 <= info["rate"] <= 160
    fresh = avd._trim(speaker().say("seven", voice, info["rate"], info["pitch"]))
    assert abs(len(fresh) - len(wave)) < 0.01 * 22050


def test_other_seed_gives_other_files(datasets):
    """A different seed draws other clips: other labels / images in the metadata, other bytes in every clip."""
    (a, _, ma), (c, _, mc) = datasets["w1"], datasets["seed6"]
    assert ma["checksum"] != mc["checksum"]
    key = lambda r: (r["shown"], r["mnist_index"], r["speech"]["voice"])  # noqa: E731
    assert [key(r) for r in all_rows(a)] != [key(r) for r in all_rows(c)]
    clips = [f for f in files(a) if f.endswith(".mp4")]
    assert clips and all((a / f).read_bytes() != (c / f).read_bytes() for f in clips)


def test_generate_on_a_complete_dataset_returns_without_writing(datasets, monkeypatch):
    """`generate` on a folder holding the same dataset returns its manifest and touches no file (no clip made)."""
    root, cfg, manifest = datasets["w1"]
    before = {f: ((root / f).stat().st_mtime_ns, (root / f).read_bytes()) for f in files(root)}

    def no_clip(*args, **kwargs):
        raise AssertionError("generate rewrote a clip of a complete dataset")

    monkeypatch.setattr(avd, "make_clip", no_clip)
    assert generate(cfg, root, workers=1, progress=False) == manifest
    assert {f: ((root / f).stat().st_mtime_ns, (root / f).read_bytes()) for f in files(root)} == before


def test_generate_with_other_config_needs_overwrite(datasets, tmp_path):
    """Another config on an existing dataset raises AVDigitsError and leaves the folder alone; overwrite=True
    writes the new dataset (manifest config and CSV rows of the new config)."""
    root = tmp_path / "ds"
    shutil.copytree(datasets["w1"][0], root)
    before = {f: (root / f).read_bytes() for f in files(root)}
    other = AVDigitsConfig(train_clips=3, test_clips=2, seed=9)
    with pytest.raises(AVDigitsError):
        generate(other, root, workers=1, progress=False)
    assert {f: (root / f).read_bytes() for f in files(root)} == before

    manifest = generate(other, root, workers=1, progress=False, overwrite=True)
    assert manifest["config"] == other.to_dict() == avd.read_manifest(root)["config"]
    assert manifest["counts"] == {"train": 3, "test": 2}
    for split, n in (("train", 3), ("test", 2)):
        assert len((root / f"{split}.csv").read_text().splitlines()) == n + 1
        assert [r["index"] for r in rows(root, split)] == list(range(n))


# ------------------------------------------------------------------------------------------------------ 2. splits
def test_image_pools_are_disjoint_and_labelled(mnist):
    """Train and test MNIST indices are disjoint, cover each class (350 + 150 of 500) and carry their class label."""
    _, labels = mnist
    pools = image_pools(labels)
    for d in range(10):
        train, test = set(pools["train"][d].tolist()), set(pools["test"][d].tolist())
        assert not train & test
        assert (len(train), len(test)) == (350, 150)
        assert train | test == set(np.flatnonzero(labels == d).tolist())
        assert all(labels[i] == d for i in train | test)


def test_clips_use_every_image_once_before_any_twice(mnist):
    """Clip images walk through shuffled passes over the split's pool: the first pass is a permutation of the pool,
    the second another one, and a different seed gives a different order."""
    from mbt.avdigits.generator import _image_for

    _, labels = mnist
    pools = image_pools(labels)
    for split in ("train", "test"):
        pool = sorted(np.concatenate(pools[split]).tolist())
        n = len(pool)
        first = [_image_for(0, split, i) for i in range(n)]
        second = [_image_for(0, split, i) for i in range(n, 2 * n)]
        assert sorted(first) == pool and sorted(second) == pool
        assert first != second
        assert first != [_image_for(1, split, i) for i in range(n)]
        # shuffled across classes: the first 100 clips of a pass show every digit
        assert set(labels[first[:100]].tolist()) == set(range(10))


def test_voice_pools_share_no_voice_and_no_speaker_variant():
    """Train and test voices are disjoint and so are their speaker variants (the part after '+'); every accent is
    in both, and the variants are split about 3:1."""
    pools = voice_pools()
    assert not set(pools["train"]) & set(pools["test"])
    var = {s: {v.split("+", 1)[1] for v in pools[s]} for s in pools}
    assert not var["train"] & var["test"]
    assert var["train"] | var["test"] == set(variants())
    assert abs(len(var["train"]) / len(variants()) - 0.75) < 0.02
    for s in pools:
        assert {v.split("+", 1)[0] for v in pools[s]} == set(ACCENTS)


@pytest.mark.parametrize("name", ["w1", "seed6", "same", "pair"])
def test_clips_draw_from_their_split_pools(datasets, mnist, name):
    """Every clip's MNIST image is in its split's pool for the shown digit (and has that label); its voice and its
    babble voices are voices of its split."""
    root, cfg, _ = datasets[name]
    _, labels = mnist
    pools, voices = image_pools(labels), voice_pools()
    for split in ("train", "test"):
        for r in rows(root, split):
            assert r["split"] == split
            assert r["mnist_index"] in set(pools[split][r["shown"]].tolist())
            assert labels[r["mnist_index"]] == r["shown"]
            assert r["speech"]["voice"] in voices[split]
            assert all(b["voice"] in voices[split] for b in r["speech"]["babble"])
            if cfg.audio_background:
                assert len(r["speech"]["babble"]) == cfg.babble


# ------------------------------------------------------------------------------------------------------ 3. content
@pytest.mark.parametrize("name", ["same", "pair"])
def test_audio_is_silent_outside_the_word_span(datasets, name):
    """Without background sound the decoded audio starts at 0, lasts ~2 s, carries the word at RMS ~0.1 inside
    [onset, offset] (less only when a peak above 0.95 made the clip scale down: the peak is then ~0.95) and is
    silent (RMS < 1% of the word's) outside [onset - 50 ms, offset + 50 ms]."""
    root, cfg, _ = datasets[name]
    n = int(round(cfg.duration * SR))
    for r in all_rows(root):
        audio, first_pts = decode_audio(root / r["file"])
        assert first_pts == 0
        assert n <= len(audio) <= n + 1024  # at most one AAC frame of padding at the end
        i0, i1 = span(r)
        assert 0 <= i0 < i1 <= n
        inside = np.sqrt(np.mean(audio[i0:i1] ** 2))
        peak = np.abs(audio).max()
        assert peak < 1.0, (r["file"], peak)  # never clipped
        if peak < 0.9:
            assert 0.09 < inside < 0.11, (r["file"], inside)  # the word is normalised to RMS 0.1
        else:  # scaled down so the peak is 0.95 (AAC moves peaks a little)
            assert 0.02 < inside < 0.1, (r["file"], inside, peak)
        quiet = np.ones(len(audio), bool)
        quiet[max(0, i0 - int(0.05 * SR)):i1 + int(0.05 * SR)] = False
        outside = np.sqrt(np.mean(audio[quiet] ** 2))
        assert outside < 0.01 * inside, (r["file"], outside, inside)


@pytest.mark.parametrize("name", ["same", "pair"])
def test_digit_lies_in_its_box_with_the_mnist_centroid(datasets, mnist, name):
    """In each decoded frame the bright pixels lie inside the metadata box (2 px slack for compression) and their
    intensity centroid is where the MNIST image's own centroid lands when its 28x28 grid is scaled into the box."""
    root, cfg, _ = datasets[name]
    images, _ = mnist
    grid = np.arange(avd.DIGIT) + 0.5
    centres = np.arange(cfg.size) + 0.5
    for r in all_rows(root):
        frames = decode_video(root / r["file"])
        img = images[r["mnist_index"]].astype(np.float64)
        cu, cv = (img.sum(0) @ grid) / img.sum(), (img.sum(1) @ grid) / img.sum()  # (x, y) in image pixels
        assert len(r["digit_boxes"]) == len(frames) == cfg.num_frames
        for t, (x0, y0, x1, y1) in enumerate(r["digit_boxes"]):
            side = x1 - x0
            assert side == pytest.approx(y1 - y0) and side == pytest.approx(r["digit_side"])
            assert cfg.digit_size[0] <= side <= cfg.digit_size[1]
            assert 0 <= x0 and 0 <= y0 and x1 <= cfg.size and y1 <= cfg.size
            w = digit_weight(frames[t])
            ys, xs = np.nonzero(w > 30)
            assert len(xs) > 20, f"{r['file']} frame {t}: no digit"
            assert xs.min() >= x0 - 2 and xs.max() + 1 <= x1 + 2, (r["file"], t, xs.min(), xs.max(), x0, x1)
            assert ys.min() >= y0 - 2 and ys.max() + 1 <= y1 + 2, (r["file"], t, ys.min(), ys.max(), y0, y1)
            got = np.array([w.sum(0) @ centres, w.sum(1) @ centres]) / w.sum()
            want = np.array([x0 + cu * side / avd.DIGIT, y0 + cv * side / avd.DIGIT])
            assert np.hypot(*(got - want)) < 1.0, (r["file"], t, got, want)


@pytest.mark.parametrize("name", ["same", "pair"])
def test_frames_show_the_metadata_mnist_image(datasets, mnist, name):
    """Each decoded frame matches the MNIST image `mnist_index` resampled (bilinearly) into the frame's box:
    correlation > 0.98 over the whole frame (another image of the same class scores far lower)."""
    root, _, _ = datasets[name]
    images, _ = mnist
    for r in all_rows(root):
        frames = decode_video(root / r["file"])
        img = images[r["mnist_index"]].astype(np.float64)
        for t, (x0, y0, x1, y1) in enumerate(r["digit_boxes"]):
            predicted = resample_matrix(y0, y1 - y0) @ img @ resample_matrix(x0, x1 - x0).T
            corr = np.corrcoef(predicted.ravel(), digit_weight(frames[t]).ravel())[0, 1]
            assert corr > 0.98, (r["file"], t, corr)


@pytest.mark.parametrize("name", ["same", "pair"])
def test_csv_rows_match_metadata(datasets, name):
    """CSV rows list the clips of metadata in order: `same` path,label with label = shown = spoken; `pair`
    path,shown,spoken,match with match = 'match' iff shown == spoken."""
    root, cfg, _ = datasets[name]
    for split in ("train", "test"):
        meta = rows(root, split)
        with open(root / f"{split}.csv", newline="") as f:
            table = list(csv.DictReader(f))
        assert len(table) == len(meta) == getattr(cfg, f"{split}_clips")
        for row, r in zip(table, meta):
            assert row["path"] == r["file"] == avd.clip_name(split, r["index"])
            assert (root / row["path"]).is_file()
            assert r["speech"]["digit"] == r["spoken"]
            if cfg.mode == "same":
                assert list(row) == ["path", "label"]
                assert int(row["label"]) == r["shown"] == r["spoken"] and r["match"] is True
            else:
                assert list(row) == ["path", "shown", "spoken", "match"]
                assert (int(row["shown"]), int(row["spoken"])) == (r["shown"], r["spoken"])
                assert row["match"] == ("match" if r["shown"] == r["spoken"] else "mismatch")
                assert r["match"] == (r["shown"] == r["spoken"])


@pytest.mark.parametrize("name", ["same", "pair"])
def test_spoken_word_is_the_labelled_digit(datasets, name):
    """The decoded word segment [onset, offset] is closest (DTW on log-mel spectra) to the synthesis of the
    labelled spoken digit by the clip's voice, rate and pitch, out of the ten digit words."""
    root, _, _ = datasets[name]
    wrong = []
    for r in all_rows(root):
        audio, _ = decode_audio(root / r["file"])
        i0, i1 = span(r)
        segment = log_mel(audio[i0:i1])
        sp = r["speech"]
        dist = [dtw_distance(segment, log_mel(synth(w, sp["voice"], sp["rate"], sp["pitch"]))) for w in DIGIT_WORDS]
        if int(np.argmin(dist)) != r["spoken"]:
            wrong.append((r["file"], r["spoken"], int(np.argmin(dist)), np.round(dist, 3).tolist()))
    assert wrong == [], f"(clip, spoken, closest synthesis, distances): {wrong}"


# ------------------------------------------------------------------------------------------------------ 4. pair mode
def test_pair_labels_follow_match_rate(datasets, tmp_path):
    """`pair` metadata holds both matching and mismatching clips with match == (shown == spoken); match_rate=1 makes
    every clip a match and match_rate=0 none (then spoken is another digit)."""
    root, _, _ = datasets["pair"]
    meta = all_rows(root)
    assert all(r["match"] == (r["shown"] == r["spoken"]) for r in meta)
    assert any(r["match"] for r in meta) and not all(r["match"] for r in meta)
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
    for rate in (0.0, 1.0):
        cfg = AVDigitsConfig(mode="pair", train_clips=8, test_clips=0, seed=3, match_rate=rate, **CLEAN)
        got = [make_clip(cfg, "train", i, tmp_path) for i in range(8)]
        assert all(r["match"] == (r["shown"] == r["spoken"]) == (rate == 1.0) for r in got)
        assert all(0 <= r["spoken"] <= 9 and r["speech"]["digit"] == r["spoken"] for r in got)


def test_same_mode_always_matches(datasets):
    """In `same` mode the spoken digit is the shown digit in every clip, whatever the difficulty settings."""
    for name in ("w1", "seed6", "same"):
        assert all(r["shown"] == r["spoken"] and r["match"] for r in all_rows(datasets[name][0]))


# ------------------------------------------------------------------------------------------------------ 5. config
BAD_CONFIGS = [
    ("mode", dict(mode="x")),
    ("occluder", dict(occluder=2)),
    ("occluder", dict(occluder=-0.1)),
    ("snr_db", dict(snr_db=(5, -5))),
    ("train_clips", dict(train_clips=-1)),
    ("distractors", dict(distractors=1.5)),
    ("babble", dict(babble=-1)),
    ("texture", dict(texture=-0.1)),
    ("blur", dict(blur=-1)),
    ("noise", dict(noise=-0.5)),
    ("digit_size", dict(digit_size=(4, 10))),
    ("digit_size", dict(digit_size=(40, 30))),
    ("digit_size", dict(digit_size=(30, 70))),
    ("match_rate", dict(match_rate=1.5)),
    ("duration", dict(duration=0.5)),
    ("train_clips", dict(train_clips=0, test_clips=0)),
    ("rate", dict(rate=(260, 120))),
    ("pitch", dict(pitch=(80, 20))),
]


@pytest.mark.parametrize("field, kwargs", BAD_CONFIGS,
                         ids=[",".join(f"{k}={v}" for k, v in kw.items()) for _, kw in BAD_CONFIGS])
def test_bad_config_values_raise_naming_the_field(field, kwargs):
    """A bad value raises ValueError whose message names the field ('AVDigitsConfig.<field> = ...')."""
    with pytest.raises(ValueError, match=rf"AVDigitsConfig\.{field}\b"):
        AVDigitsConfig(**kwargs)


def test_config_round_trips_through_dict():
    """to_dict (lists for tuples, as stored in the manifest) and from_dict give back an equal config."""
    cfg = AVDigitsConfig(mode="pair", snr_db=[-3, 3], digit_size=[20, 30], seed=4)
    assert cfg.snr_db == (-3, 3) and AVDigitsConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ------------------------------------------------------------------------------------------------------ 6. format
@pytest.mark.parametrize("name", ["w1", "pair"])
def test_clips_are_h264_and_aac_of_the_configured_shape(datasets, name):
    """Each clip holds one H.264 video stream (8 frames of 64x64 at 4 fps, 2 s) and one mono AAC stream at
    22,050 Hz lasting 2 s."""
    root, cfg, _ = datasets[name]
    for r in all_rows(root):
        with av.open(str(root / r["file"])) as c:
            assert (len(c.streams.video), len(c.streams.audio)) == (1, 1)
            v, a = c.streams.video[0], c.streams.audio[0]
            assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
            assert (v.width, v.height) == (cfg.size, cfg.size) == (64, 64)
            assert v.average_rate == 4 and float(v.duration * v.time_base) == pytest.approx(2.0)
            assert a.sample_rate == SR and a.codec_context.layout.nb_channels == 1
            assert float(a.duration * a.time_base) == pytest.approx(2.0, abs=1 / SR)
            assert c.duration / av.time_base == pytest.approx(2.0, abs=0.05)
        assert len(decode_video(root / r["file"])) == cfg.num_frames == 8
