"""Shared test helpers: the Scenic fixtures (../shared/fixtures/scenic_mbt beside the repository) and small models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURE_NAMES = (
    "a_bottleneck_token", "b_bottleneck_gap", "c_vanilla_early_separate", "d_vanilla_shared_fl1", "e_late_fusion",
    "f_spectrogram_only", "g_bottleneck_no_test_bottlenecks", "h_representation_size", "i_temporal_sampling_2d",
)


def fixture_dir() -> Path:
    """The Scenic reference fixtures. Missing fixtures fail the tests that need them: they are never skipped."""
    path = Path(os.environ.get("MBT_FIXTURES", REPO.parent / "shared" / "fixtures" / "scenic_mbt"))
    if not (path / "README.md").is_file():
        pytest.fail(f"Scenic fixtures not found at {path}: put shared/ beside the repository or set MBT_FIXTURES")
    return path


class Fixture:
    """One Scenic fixture: config, params, channels-first inputs and reference outputs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.data = np.load(fixture_dir() / f"{name}.npz")
        kwargs = json.loads(str(self.data["config_json"]))
        self.meta = kwargs.pop("_meta")
        self.kwargs = kwargs

    def __getitem__(self, key: str) -> np.ndarray:
        return self.data[key]

    def has(self, key: str) -> bool:
        return key in self.data.files

    @property
    def params(self) -> dict[str, np.ndarray]:
        return {k: self.data[k] for k in self.data.files if k.startswith("params/")}

    def inputs(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The fixture inputs, transposed from Scenic's channels-last to channels-first."""
        out = {}
        if self.has("input/rgb"):  # (B, T, H, W, C) -> (B, C, T, H, W)
            out["rgb"] = torch.from_numpy(self.data["input/rgb"]).permute(0, 4, 1, 2, 3).to(dtype)
        if self.has("input/spectrogram"):  # (B, time, mel, C) -> (B, C, time, mel)
            out["spectrogram"] = torch.from_numpy(self.data["input/spectrogram"]).permute(0, 3, 1, 2).to(dtype)
        return out


@pytest.fixture(scope="session")
def load_fixture():
    cache: dict[str, Fixture] = {}

    def load(name: str) -> Fixture:
        if name not in cache:
            cache[name] = Fixture(name)
        return cache[name]

    return load


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter random values (the default init zeroes the head, which would hide all gradients)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "encoder_norm.weight":
                p.copy_(1 + std * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model


def random_inputs(config, batch: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn((batch, *config.input_shape(m)), generator=g) for m in config.modality_fusion}


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Caches (the AV-Digits speech bank) go to a session folder, not the user's ~/.cache."""
    old = os.environ.get("MBT_CACHE_DIR")
    os.environ["MBT_CACHE_DIR"] = str(tmp_path_factory.mktemp("mbt-cache"))
    yield
    if old is None:
        os.environ.pop("MBT_CACHE_DIR", None)
    else:
        os.environ["MBT_CACHE_DIR"] = old
