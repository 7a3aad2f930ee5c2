"""The robustness benchmark script (mbt.avdigits.robust) in its quick form: the fine-tuned model starts from the
seed's single-modality models at the fine-tuning rate, the targets are computed from the rows, and a hand-written
summary.md survives --report-only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mbt.avdigits.demo import FINETUNE_LR


def test_robust_quick_fine_tunes_from_the_single_modality_models(tmp_path):
    args = [sys.executable, "-m", "mbt.avdigits.robust", "--quick", "--out", "r", "--data-dir", "data", "--seeds",
            "0", "--models", "mbt-robust-init"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    runs = tmp_path / "r" / "runs"
    row = json.loads((runs / "mbt-robust-init-seed0" / "row.json").read_text())
    assert row["lr"] == FINETUNE_LR and row["epochs"] == 5.0 and row["drop_prob"] == 0.25
    assert row["init"] == {"rgb": "r/runs/video-seed0/model", "spectrogram": "r/runs/audio-seed0/model"}
    assert set(row["results"]) == {"audio+video", "video", "audio"}
    # the single-modality weights are kept (they start the fine-tuning), the fusion model's are not
    assert (runs / "video-seed0" / "model" / "model.safetensors").is_file()
    assert not list((runs / "mbt-robust-init-seed0").rglob("*.safetensors"))
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    video = json.loads((runs / "video-seed0" / "row.json").read_text())["results"]["video"]["top1"]
    check = next(t for t in results["targets"] if t["target"].startswith("video only") and t["seed"] == 0)
    assert check["reference"] == video and check["robust"] == row["results"]["video"]["top1"]
    assert check["holds"] == (check["robust"] >= video - 0.01 - 1e-9)
    (tmp_path / "r" / "summary.md").write_text("## What this shows\n\nhand-written\n")
    r = subprocess.run([sys.executable, "-m", "mbt.avdigits.robust", "--out", "r", "--report-only"], cwd=tmp_path,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "r" / "README.md").read_text()
    assert "at peak rate [0.0005]" in text and text.rstrip().endswith("hand-written")
