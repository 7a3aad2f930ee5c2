"""Helpers for the engine tests: a small learnable audio-visual dataset of generated clips and a tiny MBT config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from mbt.data.synthetic import tone_schedule, write_media

# Class k: frames of colour COLOURS[k] (with noise) and a tone of TONES[k] Hz. Both modalities carry the label.
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 230)]
TONES = [300.0, 1200.0, 3000.0]
CLASSES = ["red_low", "green_mid", "blue_high"]


def make_clips(folder: Path, per_class: int = 8, seed: int = 0, duration: float = 1.0) -> Path:
    """Write per_class clips of each class to `folder` and a plain CSV (path,label); returns the CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for k, name in enumerate(CLASSES):
        for j in range(per_class):
            noise = rng.integers(0, 60, size=(24, 32, 3))
            base = np.clip(np.array(COLOURS[k]) + noise - 30, 0, 255).astype(np.uint8)

            def frame(i, t, size, base=base):
                return np.roll(base, i, axis=1)

            tone = TONES[k] * float(rng.uniform(0.9, 1.1))
            path = write_media(folder / f"{name}_{j}.mp4", duration=duration, size=(24, 32), frame_fn=frame,
                               audio_fn=tone_schedule([tone], amplitude=0.3))
            rows.append(f"{path.name},{name}")
    order = rng.permutation(len(rows))
    csv = folder / "clips.csv"
    csv.write_text("path,label\n" + "\n".join(rows[i] for i in order) + "\n")
    (folder / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return csv


TINY_MODEL = dict(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, fusion_layer=1, n_bottlenecks=2,
                  num_frames=4, image_size=[16, 16], rgb_patch_size=[2, 8, 8], spectrogram_shape=[96, 32],
                  spectrogram_patch_size=[16, 16], stochastic_droplayer_rate=0.0)
TINY_DATA = dict(min_resize=20, stride=2, num_test_clips=2,
                 front_end={"num_mel_bins": 32, "mean": -6.0, "std": 3.0},
                 augment={"scale_jitter": None, "color_augment_prob": 0.0, "color_drop_prob": 0.0,
                          "freq_mask_count": 0, "mixup_alpha": 0.0})


def write_config(path: Path, train_csv: Path, output_dir: Path, val_csv: Path | None = None,
                 test_csv: Path | None = None, **sections) -> Path:
    """A run config for the tiny model on generated clips; `sections` update each section."""
    labels = str(train_csv.parent / "labels.txt")
    split = lambda csv: {"annotations": str(csv), "format": "csv", "labels": labels}  # noqa: E731
    cfg = {
        "model": dict(TINY_MODEL),
        "data": dict(TINY_DATA),
        "dataset": {"train": split(train_csv), "val": split(val_csv) if val_csv else None,
                    "test": split(test_csv) if test_csv else None},
        "optim": {"name": "adamw", "lr": 3e-3, "batch_size": 8, "epochs": 6, "warmup_epochs": 0.5,
                  "max_grad_norm": 1.0, "label_smoothing": 0.0, "weight_decay": 0.0},
        "train": {"output_dir": str(output_dir), "num_workers": 0, "checkpoint_every_steps": 4,
                  "log_every_steps": 1, "progress": False, "eval_every_epochs": 0},
    }
    for name, values in sections.items():
        cfg[name] = {**(cfg.get(name) or {}), **values}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def clip_dirs(tmp_path_factory) -> dict[str, Path]:
    """Generated train (8 per class) and test (3 per class) clips, made once per session."""
    root = tmp_path_factory.mktemp("clips")
    return {"train": make_clips(root / "train", per_class=8, seed=0),
            "test": make_clips(root / "test", per_class=3, seed=1)}
