"""A tiny trained-looking model directory (random weights, label names, preprocessor config) and generated clips,
for the analysis commands."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mbt import MBTConfig
from mbt.data import DataConfig
from mbt.data.audio import FrontEndConfig
from mbt.data.synthetic import tone_schedule, write_media
from mbt.models.mbt import MBT

from ..engine.conftest import CLASSES, TINY_MODEL


def tiny_model(seed: int = 0, **changes) -> MBT:
    """A tiny MBT with random (non-zero) output weights, so its predictions differ between inputs."""
    torch.manual_seed(seed)
    cfg = MBTConfig(**{**TINY_MODEL, "modality_fusion": ("spectrogram", "rgb"), "num_classes": len(CLASSES),
                       "label_names": tuple(CLASSES), "problem_type": "single_label", "classifier": "gap",
                       **changes})
    model = MBT(cfg).eval()
    torch.nn.init.normal_(model.output_projection.weight, std=0.5)
    return model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model")
    model = tiny_model()
    fe = FrontEndConfig.preset("logmel", num_mel_bins=32, mean=-6.0, std=3.0)
    dc = DataConfig.for_model(model.config, front_end=fe, min_resize=20, stride=2)
    model.save_pretrained(root / "model", data_config=dc)
    return root / "model"


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Two clips with audio, one without an audio track, one unreadable file."""
    root = tmp_path_factory.mktemp("videos")
    (root / "clips").mkdir()
    out = {}
    for name, freq in (("a", 300.0), ("b", 2000.0)):
        out[name] = write_media(root / "clips" / f"{name}.mp4", duration=1.5, size=(24, 32),
                                audio_fn=tone_schedule([freq], amplitude=0.3))
    out["silent"] = write_media(root / "clips" / "silent.mp4", duration=1.5, size=(24, 32), audio=False)
    out["broken"] = root / "clips" / "broken.mp4"
    out["broken"].write_bytes(b"this is not a video")
    return out
