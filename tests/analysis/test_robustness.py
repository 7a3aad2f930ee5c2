"""`mbt eval --drop / --corrupt / --robustness` on a tiny model: each condition scores what it says."""

from __future__ import annotations

import json

import pytest
import torch

from mbt import cli
from mbt.data import load_pretrained, read_annotations
from mbt.data.corrupt import Corruption
from mbt.engine.evaluate import evaluate_conditions

from ..engine.conftest import CLASSES


@pytest.fixture()
def annotations(videos, tmp_path):
    csv = tmp_path / "test.csv"
    csv.write_text("path,label\n" + "".join(f"{videos[n]},{c}\n" for n, c in
                                             (("a", CLASSES[0]), ("b", CLASSES[1]), ("silent", CLASSES[2]))))
    (tmp_path / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return csv


def test_drop_and_corrupt_through_the_cli(model_dir, annotations, tmp_path, capsys):
    model, dc = load_pretrained(model_dir)
    ann = read_annotations(annotations, labels=list(CLASSES))
    want = evaluate_conditions(model, ann, dc, torch.device("cpu"), [("rgb",)], progress=False)[("rgb",)][0]
    assert cli.main(["eval", str(model_dir), str(annotations), "--drop", "audio", "--output",
                     str(tmp_path / "drop"), "--no-progress"]) == 0
    got = json.loads((tmp_path / "drop" / "metrics.json").read_text())
    assert got["modalities"] == ["rgb"] and got["loss"] == pytest.approx(want["loss"], abs=1e-6)
    clean = json.loads(capsys.readouterr().out)
    # a corruption changes the scores of the clips that have the stream, reproducibly
    for run in ("n1", "n2"):
        assert cli.main(["eval", str(model_dir), str(annotations), "--corrupt", "audio:noise:-10", "--output",
                         str(tmp_path / run), "--no-progress"]) == 0
    n1, n2 = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("n1", "n2"))
    assert n1["corruption"] == "audio:noise:-10" and n1["loss"] == n2["loss"]
    assert n1["loss"] != pytest.approx(clean["loss"], abs=1e-6)
    capsys.readouterr()
    assert cli.main(["eval", str(model_dir), str(annotations), "--drop", "smell"]) == 1
    assert "--drop 'smell': the model's streams are spectrogram (audio), rgb (video)" in capsys.readouterr().err
    assert cli.main(["eval", str(model_dir), str(annotations), "--corrupt", "audio:blur:2"]) == 1
    assert "allowed: audio:noise" in capsys.readouterr().err


def test_robustness_table_and_plot(model_dir, annotations, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert cli.main(["eval", str(model_dir), str(annotations), "--robustness", "--output", str(tmp_path / "r"),
                     "--no-progress"]) == 0
    rows = json.loads((tmp_path / "r" / "robustness.json").read_text())
    assert [r["condition"] for r in rows[:3]] == ["all streams", "audio removed", "video removed"]
    assert len(rows) == 3 + 3 + 9  # audio noise x 3, video noise / blur / occlusion x 3
    assert (tmp_path / "r" / "robustness.png").stat().st_size > 10_000
    model, dc = load_pretrained(model_dir)
    ann = read_annotations(tmp_path / "test.csv", labels=list(CLASSES))
    dev = torch.device("cpu")
    scored = evaluate_conditions(model, ann, dc, dev, [None, ("rgb",)], progress=False)
    assert rows[0]["value"] == pytest.approx(scored[None][0]["top1"]) and rows[0]["metric"] == "top1"
    assert rows[1]["summary"]["loss"] == pytest.approx(scored[("rgb",)][0]["loss"], abs=1e-6)
    blur = evaluate_conditions(model, ann, dc, dev, [None], progress=False,
                               corruption=Corruption("video", "blur", 4.0))[None][0]
    row = next(r for r in rows if r["condition"] == "video blur 4 px")
    assert row["summary"]["loss"] == pytest.approx(blur["loss"], abs=1e-6)
    out = capsys.readouterr().out
    assert "| condition | top1 (%) |" in out and "| audio noise 0 dB SNR |" in out
