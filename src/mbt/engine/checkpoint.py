"""Resumable training checkpoints: `<output>/checkpoints/step-00001234.pt`.

Each holds the model, optimiser and schedule state, the step, the data position and the random states. It is
written to a temporary file in the same folder, flushed to disk and renamed, so a crash (even SIGKILL) leaves either
the previous checkpoint or the new one, never half a file; the last `keep` are kept. Files are read with
`torch.load(weights_only=True)`: only tensors and plain containers, never arbitrary pickled objects.

Each file ends with a SHA-256 of its contents (`MBT-SHA256:` + 32 bytes after torch's zip), checked before anything
is unpickled: a file damaged on disk or in a copy is refused by name instead of resuming into NaN weights.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..models.pretrained import atomic_write, check_finite

CHECKPOINT_DIR = "checkpoints"
CHECKSUM_TAG = b"MBT-SHA256:"
_NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary files of an interrupted write are ignored)."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(state: dict[str, Any], output_dir: str | Path, step: int, keep: int) -> Path:
    """Write `state` atomically as step-<step>.pt and delete all but the newest `keep` checkpoints."""
    check_finite(state["model"], f"checkpoint of step {step}")
    path = checkpoint_path(output_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data + CHECKSUM_TAG + hashlib.sha256(data).digest()))
    for old in list_checkpoints(output_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def remove_partial_files(output_dir: str | Path) -> list[Path]:
    """Delete temporary files left by a checkpoint write that was killed (they are never read)."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    found = sorted(folder.glob(".step-*.tmp")) if folder.is_dir() else []
    for p in found:
        p.unlink(missing_ok=True)
    return found


def verified_bytes(path: str | Path) -> bytes:
    """The checkpoint's torch payload, after checking the SHA-256 it ends with (CheckpointError naming the file if
    it does not match). A file without one (written by an older mbt) is returned as it is."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    n = len(CHECKSUM_TAG) + 32
    if len(data) >= n and data[-n:-32] == CHECKSUM_TAG:
        payload = data[:-n]
        if hashlib.sha256(payload).digest() != data[-32:]:
            raise CheckpointError(f"{path}: damaged (its SHA-256 does not match: the file changed after it was "
                                  "written)")
        return payload
    return data


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training checkpoint, checksum verified, unpickled with weights_only=True."""
    path = Path(path)
    payload = verified_bytes(path)
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding objects weights_only refuses
        text = str(e)
        blocked = re.search(r"GLOBAL ([\w.]+)", text)  # "Unsupported global: GLOBAL x" / "unsupported GLOBAL x"
        if blocked:  # a pickle that would run code: say what it asked for
            name = blocked.group(1)
            raise CheckpointError(f"{path}: refused: it would unpickle {name}, which a training checkpoint never "
                                  "holds (weights_only=True loads tensors and plain values only)") from None
        raise CheckpointError(f"{path}: not a readable mbt training checkpoint ({type(e).__name__}: "
                              f"{text.splitlines()[0] if text else ''})") from None


def intact_checkpoints(output_dir: str | Path) -> list[Path]:
    """The checkpoints whose checksum holds, oldest first (each file is read once)."""
    found = []
    for p in list_checkpoints(output_dir):
        try:
            verified_bytes(p)
        except CheckpointError:
            continue
        found.append(p)
    return found


# ---------------------------------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Python, NumPy (global) and torch (CPU and CUDA) random states, as tensors and plain values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
