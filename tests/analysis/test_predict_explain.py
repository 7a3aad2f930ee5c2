"""`mbt predict` and `mbt explain`: library functions and the CLI on a tiny model directory made by the test."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from mbt.analysis.explain import explain_video, load_clip
from mbt.analysis.predict import find_videos, predict_arrays, predict_files, top_k
from mbt.data import DataConfig
from mbt.data.synthetic import write_media
from mbt.models.mbt import MBT

from ..avdigits.test_demo import png_size, run_cli


def test_top_k_scores_follow_the_problem_type(model_dir):
    model = MBT.from_pretrained(model_dir)
    logits = torch.tensor([[2.0, 0.0, 1.0]])
    best = top_k(logits, model, k=2)[0]
    p = logits.softmax(-1)[0]
    assert [l for l, _ in best] == ["red_low", "blue_high"]
    assert best[0][1] == pytest.approx(float(p[0])) and best[1][1] == pytest.approx(float(p[2]))
    model.config.problem_type = "multi_label"
    assert top_k(logits, model, k=1)[0][0][1] == pytest.approx(float(torch.sigmoid(torch.tensor(2.0))))


def test_predict_files_matches_the_model_on_the_decoded_clips(model_dir, videos):
    """Each file's logits are the model's logits on the clips the data pipeline cuts, averaged over clips; the
    silent file is scored from its frames; the broken file is reported and skipped."""
    model = MBT.from_pretrained(model_dir)
    dc = DataConfig.from_pretrained(model_dir)
    files = [videos[k] for k in ("a", "silent", "broken", "b")]
    preds, report = predict_files(model, files, dc, clips=2, k=3, batch_size=2, progress=False)
    assert [p.source for p in preds] == [str(videos[k]) for k in ("a", "silent", "b")]
    assert [s.path for s in report.skipped] == [str(videos["broken"])]
    assert preds[1].modalities == ("rgb",) and preds[0].modalities == ("spectrogram", "rgb")
    # Reference: decode the two clips of "a" with the dataset and average the model's logits by hand.
    from mbt.data import VideoDataset
    from mbt.data.annotations import Annotations, Record

    ann = Annotations([Record(str(videos["a"]), ())], list(model.config.label_names), multi_label=False)
    import dataclasses

    sample = VideoDataset(ann, dataclasses.replace(dc, num_test_clips=2), split="test")[0]
    with torch.no_grad():
        want = model({"rgb": sample["rgb"], "spectrogram": sample["spectrogram"]}).logits.mean(0)
    torch.testing.assert_close(torch.tensor(preds[0].logits), want, atol=1e-5, rtol=1e-5)
    assert preds[0].top[0][1] == pytest.approx(float(want.softmax(-1).max()), abs=1e-5)
    # Arrays give the same as files for the same inputs.
    arr = predict_arrays(model, {"rgb": sample["rgb"][:1], "spectrogram": sample["spectrogram"][:1]}, k=3)[0]
    with torch.no_grad():
        one = model({"rgb": sample["rgb"][:1], "spectrogram": sample["spectrogram"][:1]}).logits[0]
    torch.testing.assert_close(torch.tensor(arr.logits), one)


def test_find_videos_expands_folders_and_names_missing_paths(videos, tmp_path):
    folder = videos["a"].parent
    assert find_videos([folder]) == sorted(str(p) for p in folder.glob("*.mp4"))
    with pytest.raises(FileNotFoundError, match="nope.mp4: no such file"):
        find_videos([tmp_path / "nope.mp4"])


def test_predict_cli_table_json_and_csv(model_dir, videos, tmp_path):
    folder = videos["a"].parent
    r = run_cli("predict", str(model_dir), str(folder), "--top-k", "2", "--clips", "2", "--output", "p.json",
                "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "silent.mp4" in r.stdout and "no audio track" in r.stdout
    assert "broken.mp4" in r.stderr and "Traceback" not in r.stderr
    data = json.loads((tmp_path / "p.json").read_text())
    assert [d["source"].rsplit("/", 1)[1] for d in data] == ["a.mp4", "b.mp4", "silent.mp4"]
    assert all(len(d["top"]) == 2 for d in data) and data[2]["streams"] == ["video"]
    r = run_cli("predict", str(model_dir), str(videos["b"]), "--output", "p.csv", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [row["rank"] for row in rows] == ["1", "2", "3"] and rows[0]["streams"] == "audio+video"
    assert sum(float(row["score"]) for row in rows) == pytest.approx(1.0, abs=1e-5)  # 3 classes, softmax
    r = run_cli("predict", str(model_dir), str(tmp_path / "missing.mp4"), cwd=tmp_path)
    assert r.returncode == 1 and "missing.mp4: no such file" in r.stderr and "Traceback" not in r.stderr


def test_explain_writes_overlays_of_the_right_size(model_dir, videos, tmp_path):
    model = MBT.from_pretrained(model_dir)
    dc = DataConfig.from_pretrained(model_dir)
    summary = explain_video(model, videos["a"], dc, tmp_path / "lib", k=2)
    H, W = model.config.image_size
    s = -(-384 // W)
    from mbt.analysis.explain import MARGIN_BOTTOM, MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP

    mx, my = MARGIN_LEFT + MARGIN_RIGHT, MARGIN_BOTTOM + MARGIN_TOP  # axes and a colour bar around the image
    assert png_size(tmp_path / "lib" / "frame.png") == (W * s + mx, H * s + my)
    time_, mel = model.config.spectrogram_shape
    assert png_size(tmp_path / "lib" / "spectrogram.png") == (time_ * -(-384 // time_) + mx,
                                                              mel * -(-128 // mel) + my)
    t = model.config.token_grid("rgb")[0]
    assert png_size(tmp_path / "lib" / "tubelets.png")[0] == t * W * -(-192 // H)
    total = sum(summary["relevance"].values())
    assert total == pytest.approx(1.0, abs=1e-5)
    inputs, present = load_clip(videos["silent"], dc, model)
    assert present == ("rgb",)
    r = run_cli("explain", str(model_dir), str(videos["silent"]), "--out", "ex", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ex" / "frame.png").is_file() and not (tmp_path / "ex" / "spectrogram.png").exists()
    assert json.loads((tmp_path / "ex" / "explain.json").read_text())["streams"] == ["video"]
    r = run_cli("explain", str(model_dir), str(videos["broken"]), "--out", "ex2", cwd=tmp_path)
    assert r.returncode == 1 and "broken.mp4" in r.stderr and "Traceback" not in r.stderr


def test_predict_finds_every_media_file_and_goes_on_past_bad_paths(model_dir, tmp_path):
    """A folder with an audio-only file and an MPEG-TS file: both are found and predicted; an empty folder and a
    missing path are each reported in one line, the others are still predicted, and the exit status is 1."""
    folder = tmp_path / "media"
    folder.mkdir()
    write_media(folder / "talk.wav", duration=1.0, video=False, audio_codec="pcm_s16le")
    write_media(folder / "cam.ts", duration=1.0)
    (folder / "notes.txt").write_text("not media")
    (tmp_path / "empty").mkdir()
    r = run_cli("predict", str(model_dir), str(folder), str(tmp_path / "empty"), str(tmp_path / "gone.mp4"),
                "--output", "p.json", "--quiet", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "empty: a folder with no media file" in r.stderr and "gone.mp4: no such file or folder" in r.stderr
    data = json.loads((tmp_path / "p.json").read_text())
    assert {d["source"].rsplit("/", 1)[1]: d["streams"] for d in data} == {"cam.ts": ["audio", "video"],
                                                                         "talk.wav": ["audio"]}


def test_predict_and_explain_agree_on_one_clip(model_dir, videos, tmp_path):
    """`mbt predict` (one clip) and `mbt explain` score the same window, the middle one, so they give the same
    scores; the table's first column is 'file' (audio files too); explain prints no matplotlib warning."""
    p = run_cli("predict", str(model_dir), str(videos["a"]), "--top-k", "1", "--output", "p.json", "--quiet",
                cwd=tmp_path)
    e = run_cli("explain", str(model_dir), str(videos["a"]), "--out", "ex", "--top-k", "1", cwd=tmp_path)
    assert p.returncode == 0 and e.returncode == 0, p.stderr + e.stderr
    assert p.stdout.splitlines()[0].startswith("file ")
    predicted = json.loads((tmp_path / "p.json").read_text())[0]["top"][0]
    explained = json.loads((tmp_path / "ex" / "explain.json").read_text())["top"][0]
    assert predicted["label"] == explained["label"]
    assert predicted["score"] == pytest.approx(explained["score"], abs=1e-5)
    assert "Clipping" not in e.stderr and "Warning" not in e.stderr
