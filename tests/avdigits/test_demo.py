"""`mbt data avdigits` and `mbt demo` through the CLI, the decoded-clip cache, and the FLOP count of the report."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import torch

from mbt import MBTConfig
from mbt.data import DataConfig, VideoDataset, read_annotations
from mbt.data import datasets as datasets_module
from mbt.avdigits.generator import AVDigitsConfig, generate
from mbt.engine.config import ConfigError, RunConfig
from mbt.analysis.flops import flop_count
from mbt.avdigits.demo import TINY_MODEL, avdigits_run_config


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "mbt", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("avd")
    generate(AVDigitsConfig(train_clips=12, test_clips=6, seed=4), root, workers=1, progress=False)
    return root


def test_data_avdigits_cli(tmp_path):
    """The CLI writes the dataset and says where; a second call on a non-empty foreign folder fails in one line."""
    r = run_cli("data", "avdigits", "out", "--mode", "pair", "--train-clips", "4", "--test-clips", "2", "--quiet",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "AV-Digits (pair) in out: 4 train clips" in r.stdout
    assert (tmp_path / "out" / "train.csv").read_text().splitlines()[0] == "path,shown,spoken,match"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    r = run_cli("data", "avdigits", "other", "--train-clips", "2", "--test-clips", "0", "--quiet", cwd=tmp_path)
    assert r.returncode == 1 and "is not empty and holds no AV-Digits dataset" in r.stderr
    assert "Traceback" not in r.stderr and (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_cache_gives_the_same_samples_and_decodes_each_file_once(small_set, monkeypatch):
    """VideoDataset(cache=...) returns the samples of the uncached dataset (frames exactly; audio cut from the
    whole decoded clip, equal within resampler edge effects) and opens each file only on its first read; a
    shared dict serves a second dataset over the same files without decoding."""
    cfg = avdigits_run_config(small_set, "unused", model=TINY_MODEL, spec_stats=(-5.0, 3.0))
    mc = cfg.model_config(num_classes=10)
    dc = cfg.data_config(mc)
    ann = read_annotations(small_set / "train.csv")
    plain = VideoDataset(ann, dc, split="val")
    opened = []
    real = datasets_module.MediaReader

    class Counting(real):
        def __init__(self, path, threads=0):
            opened.append(path)
            super().__init__(path, threads)

    monkeypatch.setattr(datasets_module, "MediaReader", Counting)
    store: dict = {}
    cached = VideoDataset(ann, dc, split="val", cache=store)
    for epoch in range(2):
        for i in range(len(ann.records)):
            a, b = plain[i], cached[i]
            assert torch.equal(a["rgb"], b["rgb"])
            assert torch.allclose(a["spectrogram"], b["spectrogram"], atol=1e-3)
            assert (a["spectrogram"] - b["spectrogram"]).abs().mean() < 1e-4
    n = len(ann.records)
    # plain: one open per read (2 epochs); cached: one open, on the first read only.
    assert len(opened) == 2 * n + n
    opened.clear()
    other = VideoDataset(ann, DataConfig.from_dict({**dc.to_dict(), "modalities": ["rgb"]}), split="val",
                         cache=store)
    other[0]
    assert opened == []


def test_cache_needs_the_main_process():
    with pytest.raises(ConfigError, match="train.cache_decoded needs train.num_workers = 0"):
        RunConfig.from_dict({"train": {"cache_decoded": True, "num_workers": 2}})


def test_flop_count_matches_closed_form():
    """FlopCounterMode's count of a tiny rgb-only MBT equals the hand count of its matmuls (2 per multiply-add):
    tubelet embedding, per layer qkv / attention / output / MLP, and the head."""
    cfg = MBTConfig(modality_fusion=("rgb",), hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, num_classes=10,
                    fusion_layer=2, use_bottleneck=False, classifier="gap", num_frames=4, image_size=(32, 32),
                    rgb_patch_size=(2, 16, 16), spectrogram_shape=(96, 32), spectrogram_patch_size=(16, 16))
    d, m, n = 32, 64, 2 * 2 * 2  # tokens: 2 x 2 x 2 tubelets (gap: no CLS token)
    embed = n * (3 * 2 * 16 * 16) * d
    layer = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * m
    head = d * 10
    got = flop_count(cfg)
    assert got["gmacs"] * 1e9 == pytest.approx(embed + 2 * layer + head)
    assert got["gflops"] == pytest.approx(2 * got["gmacs"])


def test_demo_tiny_runs_through_the_cli(tmp_path):
    """`mbt demo` in a tiny setting: generates the data, trains the three models, evaluates the fusion model with
    each stream removed, writes report.md, two PNG plots and results.json, and prints where the report is; a
    second call reuses everything."""
    r = run_cli("demo", "--out", "d", "--tiny", "--train-clips", "48", "--test-clips", "16", "--epochs", "1",
                "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "d"
    assert f"the report is {Path('d') / 'report.md'}" in r.stdout + r.stderr
    report = (out / "report.md").read_text()
    assert "| mbt | audio+video |" in report and "| video | video |" in report and "| audio | audio |" in report
    for name in ("accuracy.png", "missing_modality.png", "robustness.png"):
        w, h = png_size(out / name)
        assert w > 300 and h > 200
    assert "## Robustness of the fusion model" in report and "| audio noise 0 dB SNR |" in report
    results = json.loads((out / "results.json").read_text())["runs"]
    # the fusion model starts from the two single-modality models and is fine-tuned with modality dropout; its
    # robustness rows hold its scores with a stream removed
    run_cfg = yaml.safe_load((out / "runs" / "mbt" / "config.yaml").read_text())
    assert run_cfg["data"]["augment"]["rgb_drop_prob"] == 0.25 == run_cfg["data"]["augment"]["spectrogram_drop_prob"]
    assert run_cfg["init"]["rgb"] == str(Path("d") / "runs" / "video" / "model")
    assert run_cfg["init"]["spectrogram"] == str(Path("d") / "runs" / "audio" / "model")
    assert run_cfg["optim"]["epochs"] == 0.25 and "starts from a pretrained encoder" in report
    robust = {r["condition"]: r["value"] for r in results["mbt"]["robustness"]}
    assert robust["all streams"] == results["mbt"]["results"]["audio+video"]["top1"]
    assert robust["audio removed"] == results["mbt"]["results"]["video"]["top1"]
    assert len(robust) == 3 + 6
    assert set(results) == {"mbt", "video", "audio"}
    assert set(results["mbt"]["results"]) == {"audio+video", "audio", "video"}
    for row in results.values():
        for acc in row["results"].values():
            assert 0.0 <= acc["top1"] <= 1.0
    assert results["mbt"]["gflops"] > results["video"]["gflops"] > 0
    again = run_cli("demo", "--out", "d", "--tiny", "--train-clips", "48", "--test-clips", "16", "--epochs", "1",
                    "--quiet", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("reusing the finished run") == 3


def test_study_script_quick_and_report_only(tmp_path):
    """benchmarks/avdigits_study.py --quick trains every run of a mode and writes its table; --report-only rebuilds
    the same table from the finished runs without training, and each cell is the run's own accuracy."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "avdigits_study.py"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, str(script), "--quick", "--modes", "same", "--layers", "1", "--out", "study",
            "--data-root", "data"]
    r = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {r["name"]: r for r in (json.loads(f.read_text()) for f in (tmp_path / "study" / "runs").glob("*/row.json"))}
    assert set(rows) == {"late", "vanilla@1", "bottleneck@1", "video", "audio"}
    assert not list((tmp_path / "study" / "runs").rglob("*.safetensors"))  # weights are dropped
    table = (tmp_path / "study" / "README.md").read_text()
    (tmp_path / "study" / "README.md").unlink()
    r = subprocess.run(args + ["--report-only"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    again = (tmp_path / "study" / "README.md").read_text()
    strip = lambda t: [l for l in t.splitlines() if not l.startswith(("Command", "Machine"))]  # noqa: E731
    assert strip(again) == strip(table)
    assert "training" not in r.stdout + r.stderr.replace("no training", "")
    late = rows["late"]["results"]
    cells = f"| late | 2 | {100 * late['audio+video']['top1']:.1f} | {100 * late['video']['top1']:.1f} | " \
            f"{100 * late['audio']['top1']:.1f} | {rows['late']['gflops']:.3f} | {rows['late']['gmacs']:.3f} | 1 |"
    assert cells in again
    assert png_size(tmp_path / "study" / "same.png")[0] > 300
    assert "1 epochs of 200 clips" in again and all(r["epochs"] == 1 and r["train_clips"] == 200 for r in rows.values())
    late_file = next((tmp_path / "study" / "runs").glob("same-late-*/row.json"))
    late_file.write_text(json.dumps({**rows["late"], "epochs": 2}))
    mixed = subprocess.run(args + ["--report-only"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert mixed.returncode == 1 and "different budgets" in mixed.stderr
    empty = subprocess.run(args[:-4] + ["--out", "none", "--report-only"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert empty.returncode == 1 and "no finished runs" in empty.stderr


def test_study_summary_is_mean_and_sample_std():
    from mbt.avdigits import study

    assert study._summary([0.5]) == "50.0"
    assert study._summary([0.5, 0.7]) == "60.0 ± 14.1"  # sample std of (50, 70) = 10 * sqrt(2)


def test_demo_evaluates_each_test_clip_once(small_set, tmp_path, monkeypatch):
    """train_and_evaluate loads every test clip once (training runs no test of its own) and scores the three test
    conditions from it; the full condition is what `mbt eval` gives, and it is written to the run's eval/ folder."""
    from mbt.avdigits.demo import train_and_evaluate
    from mbt.data import load_pretrained
    from mbt.engine.evaluate import evaluate_conditions, evaluate_dataset

    loads: dict[str, list[int]] = {}
    original = VideoDataset.load

    def counting(self, index):
        loads.setdefault(self.split, []).append(index)
        return original(self, index)

    monkeypatch.setattr(VideoDataset, "load", counting)
    # The test clips of digits the 12 training clips have (the model knows only the classes it was trained on).
    seen = {line.split(",")[1] for line in (small_set / "train.csv").read_text().splitlines()[1:]}
    rows = [line.split(",") for line in (small_set / "test.csv").read_text().splitlines()[1:]]
    test_csv = tmp_path / "test.csv"
    test_csv.write_text("path,label\n" + "".join(f"{small_set / p},{y}\n" for p, y in rows if y in seen))
    n_test = len(test_csv.read_text().splitlines()) - 1
    assert n_test >= 2
    cfg = avdigits_run_config(small_set, tmp_path / "run", model=TINY_MODEL, epochs=1, batch_size=4,
                              spec_stats=(-5.0, 3.0), progress=False)
    cfg.dataset.test.annotations = str(test_csv)
    row = train_and_evaluate(cfg, cache={}, progress=False)
    assert sorted(loads["test"]) == list(range(n_test))  # each test clip loaded once
    assert set(row["results"]) == {"audio+video", "audio", "video"}
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["top1"] == row["results"]["audio+video"]["top1"]

    # The conditions scored together equal separate evaluations, each with the stream removed from the batch.
    model, data = load_pretrained(row["model_dir"])
    ann = read_annotations(test_csv, labels=list(model.config.label_names))
    together = evaluate_conditions(model, ann, data, torch.device("cpu"), [("rgb",), None], progress=False)
    for condition, (summary, _) in together.items():
        kept = data if condition is None else dataclasses.replace(data, modalities=condition)
        alone, _ = evaluate_dataset(model, ann, kept, torch.device("cpu"), progress=False)
        assert summary["top1"] == alone["top1"] and summary["loss"] == pytest.approx(alone["loss"], abs=1e-5)
