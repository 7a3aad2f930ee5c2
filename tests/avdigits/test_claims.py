"""The claims study (mbt.avdigits.claims): its grid, the locks that let processes share it, per-clip scoring, the
claims decided from rows whose outcome is known, and a quick run by two processes at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from mbt.avdigits import claims
from mbt.avdigits.claims_report import Grid, bits, ci_text, claims as decide_claims, report, study_commands, unbits

from .test_demo import png_size


def test_grid_order_cells_and_dependencies():
    plan = claims.grid(["same", "pair"], [0, 1, 2], L=4, mid=2)
    keys = [r.key for r in plan]
    assert len(keys) == len(set(keys))
    # the six encoders first, then cell by cell with the seeds inside
    assert [r.key for r in plan[:6]] == [f"same-{n}-seed{s}" for s in (0, 1, 2) for n in ("video", "audio")]
    assert all(r.pretrain for r in plan[:6]) and not any(r.pretrain for r in plan[6:])
    assert [r.key for r in plan[6:9]] == ["same-bottleneck-2-seed0", "same-bottleneck-2-seed1",
                                          "same-bottleneck-2-seed2"]
    same = {r.name for r in plan if r.mode == "same"}
    pair = {r.name for r in plan if r.mode == "pair"}
    fusion = {"late"} | {f"{k}@{l}" for k in ("vanilla", "bottleneck") for l in range(4)} | \
        {"bottleneck@2x1", "bottleneck@2x16"}
    assert same == fusion | {"video", "audio", "robust"} and pair == fusion
    assert len(plan) == 6 + 3 * (len(fusion) + 1) + 3 * len(fusion)
    r = next(r for r in plan if r.key == "pair-bottleneck-2x16-seed1")
    assert dict(r.change) == {"fusion_layer": 2, "use_bottleneck": True, "n_bottlenecks": 16}
    assert r.depends_on() == ["same-video-seed1", "same-audio-seed1"]
    robust = next(r for r in plan if r.name == "robust")
    assert dict(robust.augment) == {"rgb_drop_prob": 0.25, "spectrogram_drop_prob": 0.25}
    assert {r.name for r in claims.grid(["same"], [0], 4, 2, only=["late"])} == {"video", "audio", "late"}


def test_locks_share_the_grid(tmp_path):
    plan = claims.grid(["same"], [0], L=2, mid=1, only=["late", "bottleneck@1"])
    runs = tmp_path / "runs"
    runs.mkdir()
    first, lock1, _ = claims.next_run(plan, runs)
    second, lock2, _ = claims.next_run(plan, runs)  # another taker: the first is locked
    assert (first.key, second.key) == ("same-video-seed0", "same-audio-seed0")
    third, _, unfinished = claims.next_run(plan, runs)  # the fine-tuning runs wait for the encoders
    assert third is None and unfinished
    for r, lock in ((first, lock1), (second, lock2)):
        (runs / r.key / "model").mkdir(parents=True)
        (runs / r.key / "row.json").write_text("{}")
        lock.release()
    # finished encoders without their weights (they are not committed) are made again while a run needs them
    again, lock, _ = claims.next_run(plan, runs)
    assert again.key == "same-video-seed0"
    lock.release()
    for r in (first, second):
        (runs / r.key / "model" / "model.safetensors").write_bytes(b"")
    nxt, lock, _ = claims.next_run(plan, runs)
    assert nxt.key == "same-bottleneck-1-seed0"
    lock.release()


def test_a_lock_dies_with_its_process(tmp_path):
    """A lock held by another live process is refused; when that process is killed, it is free (the kernel drops
    an flock with its holder, so no stale lock, empty lock file or reused pid can block the grid)."""
    path = tmp_path / "run.lock"
    code = ("import sys, time; from pathlib import Path; from mbt.avdigits.claims import Lock; "
            "l = Lock(Path(sys.argv[1])); assert l.acquire(); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not claims.Lock(path).acquire()
        assert json.loads(path.read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    mine = claims.Lock(path)
    assert mine.acquire() and json.loads(path.read_text())["pid"] == os.getpid()
    assert not claims.Lock(path).acquire()  # exclusive within one process too (another descriptor)
    mine.release()
    path.write_text("")  # an empty or corrupt lock file is no obstacle
    assert claims.Lock(path).acquire()


def test_runs_made_with_other_settings_are_refused(tmp_path):
    import argparse

    plan = claims.grid(["same"], [0], L=2, mid=1, only=["late"])
    args = argparse.Namespace(epochs=1.0, finetune_epochs=1.0, finetune_lr=5e-4, train_clips=200, test_clips=100)
    model = dict(claims.TINY_MODEL)
    runs = tmp_path / "runs"
    late = next(r for r in plan if r.name == "late")
    (runs / late.key).mkdir(parents=True)
    (runs / late.key / "row.json").write_text(json.dumps({"settings": claims.settings(late, args, model)}))
    assert claims.check_reuse(plan, runs, args, model) == []
    other = argparse.Namespace(**{**vars(args), "finetune_lr": 1e-3})
    assert claims.check_reuse(plan, runs, other, model) == ["same-late-seed0: lr was 0.0005, now 0.001"]


def test_a_run_stopped_while_scoring_is_scored_without_training(tmp_path, monkeypatch):
    """trained.json and the weights of an interrupted run: `execute` scores them and does not train again."""
    import argparse

    from mbt.avdigits.generator import AVDigitsConfig, generate
    from mbt.models.mbt import MBT
    from mbt.avdigits import demo

    data = tmp_path / "data"
    generate(AVDigitsConfig(train_clips=4, test_clips=3, seed=2), data, workers=1, progress=False)
    args = argparse.Namespace(epochs=1.0, finetune_epochs=1.0, finetune_lr=5e-4, train_clips=4, test_clips=3,
                              mid_layer=1, localisation_clips=3, no_localisation=True, keep_weights=False)
    model = dict(claims.TINY_MODEL)
    run = claims.Run("same", "video", 0, (("modality_fusion", ["rgb"]),), (), True)
    cfg = demo.avdigits_run_config(data, tmp_path / "out" / "runs" / run.key, model={**model, "modality_fusion": ["rgb"]},
                                   epochs=1, spec_stats=(0.0, 1.0), progress=False)
    net = MBT(cfg.model_config(num_classes=10, label_names=[str(i) for i in range(10)]))
    run_dir = tmp_path / "out" / "runs" / run.key
    net.save_pretrained(run_dir / "model", data_config=cfg.data_config(net.config))
    (run_dir / "trained.json").write_text(json.dumps({"train_seconds": 12.5}))

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(claims, "train", no_training)
    row = claims.execute(run, tmp_path / "out", {"same": data}, model, (0.0, 1.0), args, {})
    assert row["train_seconds"] == 12.5 and len(row["correct"]["video"]["top1"]) == 3
    assert json.loads((run_dir / "row.json").read_text())["settings"]["epochs"] == 1.0


def test_per_clip_correctness_per_head():
    logits = torch.tensor([[0.1, 0.9, 2.0, 0.0, 1.0], [3.0, 0.0, 0.0, 5.0, 1.0]])
    labels = torch.tensor([[0, 1, 1, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.float)
    got = claims.per_clip(logits, labels, {"match": 2, "digit": 3})
    assert got["match"].tolist() == [True, True] and got["digit"].tolist() == [True, False]
    one_hot = torch.tensor([[0, 0, 1, 0, 0], [0, 1, 0, 0, 0]], dtype=torch.float)
    assert claims.per_clip(logits, one_hot, None)["top1"].tolist() == [True, False]
    assert unbits(bits(np.array([1, 0, 1], bool))).tolist() == [True, False, True]


def _row(mode, name, seed, accs, change=None, pretrain=False, gflops=0.1, n=400, loc=None, seed_sd=None):
    """A finished run whose clips are right with the given accuracies ({condition: {head: acc}}), on clips drawn
    at random; with `seed_sd`, each seed shifts the accuracy by that much (normal), and easy clips (the same for
    every run) are right more often."""
    rng = np.random.default_rng(zlib.crc32(f"{mode} {name} {seed}".encode()))
    easy = np.random.default_rng(99).random(n)  # clip difficulty, shared by every run
    results, correct = {}, {}
    for cond, heads in accs.items():
        results[cond], correct[cond] = {}, {}
        for head, acc in heads.items():
            if seed_sd is None:
                hits = np.zeros(n, bool)
                hits[rng.permutation(n)[:round(acc * n)]] = True
            else:
                hits = rng.random(n) < np.clip(acc + rng.normal(0, seed_sd) + 0.4 * (easy - 0.5), 0, 1)
            results[cond][head] = float(hits.mean())
            correct[cond][head] = bits(hits)
    row = {"mode": mode, "name": name, "seed": seed, "change": change or {}, "augment": {}, "pretrain": pretrain,
           "epochs": 5.0, "lr": 5e-4, "train_clips": 3000, "test_clips": n, "train_seconds": 1.0,
           "results": results, "correct": correct, "gflops": gflops, "gmacs": gflops / 2}
    if loc is not None:
        row["localisation"] = {k: [v] * 50 for k, v in loc.items()}
    return row


def _rows(bottleneck_acc=0.9, late_match=0.5):
    rows = []
    for seed in (0, 1, 2):
        rows.append(_row("same", "video", seed, {"video": {"top1": 0.68}}, {"modality_fusion": ["rgb"]}, True))
        rows.append(_row("same", "audio", seed, {"audio": {"top1": 0.73}}, {"modality_fusion": ["spectrogram"]},
                         True))
        for l in range(2):
            for kind, acc, g in (("vanilla", 0.85, 0.12), ("bottleneck", bottleneck_acc, 0.10)):
                loc = {"rgb": 0.5 + (0.1 if kind == "bottleneck" else 0), "rgb_chance": 0.3,
                       "spectrogram": 0.4, "spectrogram_chance": 0.2}
                ch = {"fusion_layer": l, "use_bottleneck": kind == "bottleneck"}
                rows.append(_row("same", f"{kind}@{l}", seed, {"audio+video": {"top1": acc},
                                                               "video": {"top1": 0.6}, "audio": {"top1": 0.6}},
                                 ch, gflops=g, loc=loc))
                match = 0.85 if kind == "bottleneck" else 0.8
                rows.append(_row("pair", f"{kind}@{l}", seed, {"audio+video": {"match": match, "shown": 0.7,
                                                                               "spoken": 0.7}}, ch, gflops=g))
        rows.append(_row("same", "late", seed, {"audio+video": {"top1": 0.8}, "video": {"top1": 0.6},
                                                "audio": {"top1": 0.6}}, {"fusion_layer": 2}, gflops=0.09))
        rows.append(_row("pair", "late", seed, {"audio+video": {"match": late_match, "shown": 0.7, "spoken": 0.7}},
                         {"fusion_layer": 2}, gflops=0.09))
        rows.append(_row("same", "robust", seed, {"audio+video": {"top1": 0.9}, "video": {"top1": 0.5},
                                                  "audio": {"top1": 0.8}},
                         {"fusion_layer": 1, "use_bottleneck": True}, gflops=0.1))
    return rows


def test_claims_are_decided_from_the_clips():
    found = {c["claim"][0]: c for c in decide_claims(Grid(_rows()), L=2, mid=1, counts=[4])}
    assert found["1"]["decision"] == "yes"  # 90 / 85 / 80 against the audio model's 73
    assert found["2"]["decision"] == "not resolved"  # layer 1 scores as layer 0 (on other clips); late is worse
    parts = dict(found["2"]["parts"])
    assert parts["bottleneck@1 vs late"]["decision"] == "yes"
    assert found["3"]["decision"] == "yes"  # 5 points better (same, and pair's match) and cheaper
    assert found["4"]["decision"] == "no"  # 50 with video alone against the video model's 68 (80 against 73: yes)
    assert dict(found["4"]["parts"])["robust, video removed vs audio model (>= -1 point)"]["decision"] == "yes"
    assert found["5"]["decision"] == "yes"  # late at 50%, the cross-modal models at 80%
    assert found["6"]["decision"] == "not resolved"  # spectrogram shares equal between kinds
    loc = dict(found["6"]["parts"])["frames: share inside the digit's box, bottleneck@0 vs vanilla@0"]
    assert loc["difference"] == pytest.approx(0.1) and loc["decision"] == "yes"
    # late fusion learning the match label breaks claim 5; a dearer bottleneck breaks claim 3
    assert {c["claim"][0]: c for c in decide_claims(Grid(_rows(late_match=0.7)), 2, 1, [4])}["5"][
        "decision"] == "no"
    rows = _rows()
    for r in rows:
        if r["name"].startswith("bottleneck"):
            r["gflops"] = 0.2
    assert {c["claim"][0]: c for c in decide_claims(Grid(rows), 2, 1, [4])}["3"]["decision"] == "no"
    # a partial grid decides nothing it has not run: no pair late fusion, no vanilla@0 in same
    part = [r for r in _rows() if not (r["mode"] == "pair" and r["name"] == "late")
            and not (r["mode"] == "same" and r["name"] == "vanilla@0")]
    found = {c["claim"][0]: c for c in decide_claims(Grid(part), 2, 1, [4])}
    assert found["5"]["decision"] == "not resolved (1 of 2 comparisons run)"
    assert found["3"]["decision"] == "not resolved (3 of 4 comparisons run)"
    assert found["2"]["decision"].startswith("not resolved")


def test_equal_configurations_are_not_told_apart():
    """Two cells of equal quality whose seeds differ by a few points: the claims built on them stay unresolved
    (a bootstrap over 3 seeds would often call them)."""
    rows = []
    for seed in (0, 1, 2):
        for name, g in (("vanilla@0", 0.12), ("bottleneck@0", 0.10)):
            rows.append(_row("same", name, seed, {"audio+video": {"top1": 0.8}}, {"fusion_layer": 0}, gflops=g,
                             seed_sd=0.03))
    c = decide_claims(Grid(rows), 1, 1, [4])
    parts = dict(next(x for x in c if x["claim"].startswith("3."))["parts"])
    part = parts["bottleneck@0 vs vanilla@0 (>= -1 point; cheaper)"]
    assert part["decision"] == "not resolved" and part["low"] < -0.01 < part["high"]
    assert part["seeds"] == 3 and part["clips"] == 400 and part["se_seeds"] > part["se_clips"] > 0


def test_report_writes_tables_intervals_and_figure(tmp_path):
    model = dict(claims.TINY_MODEL, num_layers=2, fusion_layer=1)
    rows = _rows()
    report(tmp_path, rows, model, 1, None, {"commands": ["python -m mbt.avdigits.claims --x",
                                                          "python -m mbt.avdigits.claims --x --seeds 3"],
                                             "machine": "here"})
    text = (tmp_path / "README.md").read_text()
    cell = ci_text([r["results"]["audio+video"]["top1"] for r in rows if r["name"] == "bottleneck@1"
                    and r["mode"] == "same"])
    assert f"| bottleneck@1 | 1 | — | {cell} |" in text
    assert ("\n    python -m mbt.avdigits.claims --x\n    python -m mbt.avdigits.claims --x --seeds 3\n" in text
            and "Machine: here;" in text and "From scratch: none." in text)
    # an older study.json's single command is read as the first of the list
    assert study_commands({"command": "a"}) == ["a"] and study_commands({}) == []
    saved = json.loads((tmp_path / "results.json").read_text())
    c = next(c for c in saved["cells"] if c["name"] == "bottleneck@1" and c["mode"] == "same"
             and c["condition"] == "audio+video")
    assert f"{100 * c['mean']:.1f} [{100 * c['low']:.1f}, {100 * c['high']:.1f}]" == cell
    assert "### 1. Fusing audio and video beats the best single stream: **yes**" in text
    assert png_size(tmp_path / "claims.png")[0] > 1000
    assert ci_text([0.8, 0.82, 0.84]) == "82.0 [77.0, 87.0]"  # 2 + -t(0.975, 2) * 2 / sqrt(3) = 4.97
    assert ci_text([0.5]) == "50.0" and ci_text([]) == "—"


def test_two_processes_share_a_quick_study(tmp_path):
    """Two processes started with one command train each run once between them; --report-only rebuilds the
    report from the runs."""
    args = [sys.executable, "-m", "mbt.avdigits.claims", "--quick", "--modes", "same", "--seeds", "0", "--only",
            "bottleneck@1", "vanilla@1", "--out", "study", "--data-root", "data", "--scratch", "none",
            "--localisation-clips", "20"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    (tmp_path / "data").mkdir()
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    trained = [line.split()[1] for log in logs for line in log.splitlines() if line.startswith("== ")]
    assert sorted(trained) == sorted(["same-video-seed0", "same-audio-seed0", "same-bottleneck-1-seed0",
                                      "same-vanilla-1-seed0"])
    runs = tmp_path / "study" / "runs"
    row = json.loads((runs / "same-bottleneck-1-seed0" / "row.json").read_text())
    assert set(row["correct"]) == {"audio+video", "video", "audio"} and len(row["correct"]["audio"]["top1"]) == 100
    assert row["init"]["rgb"].endswith("same-video-seed0/model")
    assert len(row["localisation"]["rgb"]) == 20 and all(0 <= x <= 1 for x in row["localisation"]["spectrogram"])
    assert (runs / "same-video-seed0" / "model" / "model.safetensors").is_file()  # the encoders are kept
    assert not list((runs / "same-bottleneck-1-seed0").rglob("*.safetensors"))
    text = (tmp_path / "study" / "README.md").read_text()
    (tmp_path / "study" / "README.md").unlink()
    r = subprocess.run(args[:3] + ["--out", "study", "--report-only", "--scratch", "none"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "study" / "README.md").read_text() == text  # the command and machine of the training
    assert f"\n    python -m mbt.avdigits.claims {' '.join(args[3:])}\n" in text
    # a second invocation with other settings refuses to mix its runs with these
    r = subprocess.run(args + ["--finetune-lr", "1e-3"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "same-bottleneck-1-seed0: lr was 0.0005, now 0.001" in r.stderr
    # another study fine-tunes from this one's encoders (--encoders): none trained there, the same weights and
    # spectrogram statistics used, and encoders missing for a seed named
    more = [*args[:4], "--modes", "pair", "--seeds", "0", "--only", "late", "--out", "study2", "--data-root", "data",
            "--scratch", "none", "--encoders", "study"]
    r = subprocess.run(more, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [line.split()[1] for line in r.stdout.splitlines() if line.startswith("== ")] == ["pair-late-seed0"]
    assert sorted(p.name for p in (tmp_path / "study2" / "runs").iterdir() if p.is_dir()) == ["pair-late-seed0"]
    row = json.loads((tmp_path / "study2" / "runs" / "pair-late-seed0" / "row.json").read_text())
    assert row["init"]["rgb"] == "study/runs/same-video-seed0/model" and set(row["results"]["audio+video"]) == \
        {"match", "shown", "spoken"}
    front_end = lambda d: json.loads((tmp_path / d / "preprocessor_config.json").read_text())["front_end"]
    assert front_end("study2/runs/pair-late-seed0/model") == front_end("study/runs/same-audio-seed0/model")
    r = subprocess.run(more[:7] + ["1"] + more[8:], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "study/runs/same-video-seed1" in r.stderr and "weights" in r.stderr
