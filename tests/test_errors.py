"""One error base: every error class of mbt is an MBTError and the built-in exception a caller expects, and the CLI
turns any MBTError into one line while a bug keeps its traceback."""

from __future__ import annotations

import pickle

import pytest

import mbt.errors as errors
from mbt import cli
from mbt.data import AnnotationError, MediaError
from mbt.models import ConfigError
from mbt.weights import CheckpointError


def test_every_error_class_is_an_mbt_error():
    classes = [getattr(errors, n) for n in errors.__all__]
    assert len(classes) == 11 and all(issubclass(c, errors.MBTError) for c in classes)
    # The names every module re-exports are the same classes (one definition each).
    assert (ConfigError, CheckpointError, AnnotationError, MediaError) == (
        errors.ConfigError, errors.CheckpointError, errors.AnnotationError, errors.MediaError)
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.MissingFileError, FileNotFoundError)
    e = pickle.loads(pickle.dumps(MediaError("a.mp4", "no video stream")))  # DataLoader workers send errors back
    assert (e.path, e.reason, str(e)) == ("a.mp4", "no video stream", "a.mp4: no video stream")


def test_cli_prints_an_mbt_error_as_one_line_and_keeps_bugs(monkeypatch, capsys):
    def fails(args):
        raise errors.InputError("clips.csv: 3 classes, but the model has 10")

    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_run_flops", fails)
    assert cli.main(["flops", "mbt-b16x2"]) == 1
    err = capsys.readouterr().err
    assert err == "mbt flops: error: clips.csv: 3 classes, but the model has 10\n"
    monkeypatch.setattr(cli, "_run_flops", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["flops", "mbt-b16x2"])


def test_missing_model_directory_is_one_line(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path / "nope"), str(tmp_path / "x.mp4")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope: not a model directory" in err
