"""`compute_stats`: the mean and standard deviation of the spectrogram features over a dataset.

The result goes into `FrontEndConfig.mean` / `.std`, which normalise the features as (x - mean) / (std *
std_multiplier). Statistics are taken over every time frame and mel bin of the middle window of each clip (the
validation window), before normalisation and without augmentation; clips without audio are left out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..progress import progress_bar
from .annotations import Annotations
from .config import DataConfig
from .datasets import SkipReport, VideoDataset, make_loader


@dataclass
class SpecStats:
    mean: float
    std: float
    num_clips: int
    num_values: int
    skipped: str
    """SkipReport summary of the files that could not be read."""


def compute_stats(annotations: Annotations, config: DataConfig, max_clips: int | None = None,
                  num_workers: int = 0, batch_size: int = 16, progress: bool = True) -> SpecStats:
    """Mean and std of the raw front-end features of `annotations` (video decoding is not needed and not done)."""
    raw_front_end = dataclasses.replace(config.front_end, mean=0.0, std=1.0, std_multiplier=1.0)
    cfg = dataclasses.replace(config, modalities=("spectrogram",), front_end=raw_front_end, missing_stream="flag")
    records = annotations.records[:max_clips] if max_clips else annotations.records
    subset = dataclasses.replace(annotations, records=records)
    dataset = VideoDataset(subset, cfg, split="val", on_error="skip")
    total = torch.zeros((), dtype=torch.float64)
    total_sq = torch.zeros((), dtype=torch.float64)
    count = clips = 0
    report = SkipReport()
    loader = make_loader(dataset, batch_size=batch_size, num_workers=num_workers)
    for batch in progress_bar(loader, desc="spectrogram statistics", unit="batch", disable=not progress):
        report.update(batch)
        if not batch["size"]:
            continue
        keep = ~batch["missing"]["spectrogram"]
        x = batch["spectrogram"][keep].double()
        total += x.sum()
        total_sq += x.square().sum()
        count += x.numel()
        clips += int(keep.sum())
    if count == 0:
        raise InputError(f"{annotations.source}: no clip with audio could be read, so there are no statistics "
                         f"({report.summary()})")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return SpecStats(float(mean), float(std), clips, count, report.summary())
