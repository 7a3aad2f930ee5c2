"""Evaluation: clip averaging of raw logits, videos missing a stream, sharding, label checks, `mbt eval` errors."""

from __future__ import annotations

import pytest
import torch

from mbt import MBT, MBTConfig
from mbt.cli import main
from mbt.data.annotations import Annotations
from mbt.engine.evaluate import ShardSampler, check_labels, predict_batch

from ..conftest import random_inputs, randomize_

CONFIG = MBTConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, fusion_layer=1, num_frames=4,
                   image_size=(16, 16), rgb_patch_size=(2, 8, 8), spectrogram_shape=(32, 16), num_classes=5)


def _model() -> MBT:
    return randomize_(MBT(CONFIG)).eval()


def test_multi_clip_logits_are_the_mean_of_raw_clip_logits():
    model = _model()
    B, N = 3, 4
    clips = [random_inputs(CONFIG, batch=B, seed=s) for s in range(N)]
    batch = {m: torch.stack([c[m] for c in clips], dim=1) for m in CONFIG.modality_fusion}  # (B, N, ...)
    batch.update(size=B, missing={m: torch.zeros(B, dtype=torch.bool) for m in CONFIG.modality_fusion})
    with torch.no_grad():
        want = torch.stack([model(c).logits for c in clips]).mean(0)
        probs = torch.stack([model(c).logits.softmax(-1) for c in clips]).mean(0)
    for chunk in (1, 3, 16):  # how many clips go through the model at once must not matter
        got = predict_batch(model, batch, torch.device("cpu"), clips_per_forward=chunk)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got.softmax(-1), probs, atol=1e-4)  # raw logits are averaged, not probabilities


def test_a_video_without_audio_is_scored_with_its_frames_alone():
    model = _model()
    x = random_inputs(CONFIG, batch=3)
    batch = {**x, "size": 3, "missing": {"rgb": torch.tensor([False, False, False]),
                                         "spectrogram": torch.tensor([False, True, False])}}
    got = predict_batch(model, batch, torch.device("cpu"))
    with torch.no_grad():
        both = model(x).logits
        rgb_only = model({"rgb": x["rgb"][1:2]}).logits
    torch.testing.assert_close(got[[0, 2]], both[[0, 2]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1:2], rgb_only, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[1], both[1], atol=1e-3)


@pytest.mark.parametrize("n, world", [(10, 1), (10, 3), (2, 4), (0, 2), (17, 2)])
def test_shards_cover_every_video_once(n, world):
    seen = sorted(i for r in range(world) for i in ShardSampler(n, r, world))
    assert seen == list(range(n))


def test_label_checks_name_the_problem():
    config = CONFIG.replace(label_names=("a", "b", "c", "d", "e"), problem_type="single_label")
    ok = Annotations(records=[], label_names=["a", "b", "c", "d", "e"], multi_label=False, source="x.csv")
    check_labels(config, ok)
    with pytest.raises(ValueError, match="x.csv: 4 classes, but the model has 5"):
        check_labels(config, Annotations([], ["a", "b", "c", "d"], False, source="x.csv"))
    with pytest.raises(ValueError, match="class 1 is 'z' but the model's class 1 is 'b'"):
        check_labels(config, Annotations([], ["a", "z", "c", "d", "e"], False, source="x.csv"))
    with pytest.raises(ValueError, match="multi_label task, but the model was trained for single_label"):
        check_labels(config, Annotations([], ["a", "b", "c", "d", "e"], True, source="x.csv"))


def test_mbt_eval_errors_are_one_line(tmp_path, capsys):
    model = _model()
    model.save_pretrained(tmp_path / "m")  # no preprocessor_config.json
    (tmp_path / "a.csv").write_text("x.mp4,a\n")
    assert main(["eval", str(tmp_path / "m"), str(tmp_path / "a.csv")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "preprocessor_config.json: no such file" in err[0]
    assert main(["eval", str(tmp_path / "nope"), str(tmp_path / "a.csv")]) == 1
    assert "not a model directory" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 1
    assert "no such config file" in capsys.readouterr().err


def test_eval_writes_every_skipped_file(clip_dirs, tmp_path):
    """`mbt eval` names every video it could not score in skipped.csv beside metrics.json (not just the first ten),
    counts them in metrics.json, and keeps stdout for the JSON alone."""
    import csv
    import json

    from mbt.cli import main  # noqa: F401  (the CLI runs in a subprocess below)

    from .conftest import write_config
    from ..avdigits.test_demo import run_cli

    cfg = write_config(tmp_path / "run.yaml", clip_dirs["train"], tmp_path / "run", optim={"epochs": 1})
    assert run_cli("train", str(cfg), cwd=tmp_path).returncode == 0
    folder = clip_dirs["test"].parent
    rows = clip_dirs["test"].read_text().splitlines()
    bad = []
    for i in range(12):
        path = tmp_path / f"broken_{i}.mp4"
        path.write_bytes(b"\x00not a video" * (i + 1))
        bad.append(f"{path},red_low")
    csv_path = tmp_path / "eval.csv"
    csv_path.write_text("\n".join(rows[:1] + bad + [f"{folder / r}" for r in rows[1:]]) + "\n")
    r = run_cli("eval", str(tmp_path / "run" / "model"), str(csv_path), "--labels", str(folder / "labels.txt"),
                "--output", "ev", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)  # stdout is the JSON and nothing else
    assert summary["num_skipped"] == 12 and summary["num_videos"] == 12 + len(rows) - 1
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["num_skipped"] == 12
    skipped = list(csv.DictReader(open(tmp_path / "ev" / "skipped.csv")))
    assert [s["path"] for s in skipped] == [b.split(",")[0] for b in bad]
    assert all("not a media file" in s["reason"] for s in skipped)
