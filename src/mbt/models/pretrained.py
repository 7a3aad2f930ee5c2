"""Model directories, as in Hugging Face: `config.json` (the MBTConfig) + `model.safetensors` (the state dict), and
`preprocessor_config.json` (the `mbt.data.DataConfig` the model was trained with) when there is one.

`MBT.save_pretrained` / `MBT.from_pretrained` are the front doors; `mbt.data.load_pretrained(dir)` gives the model
and its data config together. This module only reads and writes files, so it needs no model class (no import
circle with `mbt.py`). `atomic_write` is also the writer of training checkpoints (`mbt.engine.checkpoint`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, MissingFileError, NonFiniteError
from .config import MBTConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PREPROCESSOR_NAME = "preprocessor_config.json"  # the data config (mbt.data.DataConfig), when saved with the model


def atomic_write(path: Path, write) -> None:
    """`write(tmp_path)` to a temporary file in the same folder, flush it to disk and rename it to `path`, so a
    crash (even SIGKILL) leaves the old file or the new one, never half a file. Temporary files are named
    `.<name>.*.tmp`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself is on disk
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_model_dir(model: torch.nn.Module, directory: str | Path, data_config=None) -> Path:
    """Write `model.config` to config.json and the state dict to model.safetensors in `directory`, and
    `data_config` (an `mbt.data.DataConfig`, if given; checked against the model) to preprocessor_config.json."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory}: exists and is not a folder; give a new or existing folder for the model")
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    check_finite(state, f"model for {directory}")
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, lambda p: model.config.to_json_file(p))
    if data_config is not None:
        data_config.check_model(model.config)
        atomic_write(directory / PREPROCESSOR_NAME, lambda p: data_config.save_file(p))
    return directory


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise NonFiniteError naming every floating-point tensor of `tensors` that holds NaN or inf: such weights
    must never be written (a model that outputs NaN for every input)."""
    bad = [k for k, v in tensors.items() if torch.is_tensor(v) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteError(f"{what}: {len(bad)} tensor(s) hold NaN or inf ({', '.join(bad[:5])}"
                             f"{', ...' if len(bad) > 5 else ''}); nothing was written")


def mismatch_message(missing: list[str], unexpected: list[str], wrong_shape: list[str],
                     noun: str = "tensor") -> str:
    """'missing tensor(s) [...]; unexpected tensor(s) [...]; wrong shape [...]', or '' when all fit."""
    parts = []
    if missing:
        parts.append(f"missing {noun}(s) {missing}")
    if unexpected:
        parts.append(f"unexpected {noun}(s) {unexpected}")
    if wrong_shape:
        parts.append(f"wrong shape: {wrong_shape}")
    return "; ".join(parts)


def check_state_dict(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], source: str) -> None:
    """Raise `CheckpointError` naming every missing, unexpected or wrongly shaped tensor."""
    shapes = [f"{k}: file {tuple(got[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(got)) if tuple(got[k].shape) != tuple(expected[k].shape)]
    problems = mismatch_message(sorted(set(expected) - set(got)), sorted(set(got) - set(expected)), shapes)
    if problems:
        raise CheckpointError(f"{source} does not fit the model in its config.json: {problems}")


def read_model_dir(directory: str | Path, map_location: str | torch.device = "cpu"
                   ) -> tuple[MBTConfig, dict[str, torch.Tensor]]:
    """The config and the state dict of a model directory (`MBT.from_pretrained` builds the model from them)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MissingFileError(f"{directory}: not a model directory (expected a folder with {CONFIG_NAME} and "
                               f"{WEIGHTS_NAME}, as written by save_pretrained, `mbt train` or `mbt convert`)")
    config = MBTConfig.from_json_file(directory / CONFIG_NAME)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise MissingFileError(f"{weights}: no such file")
    try:
        state = load_file(weights, device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from None
    return config, state


__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "PREPROCESSOR_NAME", "atomic_write", "save_model_dir", "read_model_dir",
           "check_state_dict", "check_finite", "mismatch_message"]
