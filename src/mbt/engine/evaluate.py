"""Evaluation: logits over an annotated dataset (single or multi-clip), metrics, and the files `mbt eval` writes.

Multi-clip testing (reference D.8): each video gives `num_test_clips` windows; the model scores every clip and the
**raw logits are averaged** over the clips (no softmax or sigmoid before averaging), as Scenic does. A video that
lacks a configured stream (audio-less Kinetics clips, say) is scored with the modalities it has: the model fuses the
modalities present and the token head averages their logits.

Under torchrun every process scores a disjoint share of the videos (no padding, so nothing is counted twice) and the
logits are gathered before any metric is computed.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import Sampler
from tqdm.auto import tqdm

from ..data.annotations import Annotations
from ..data.config import DataConfig
from ..data.corrupt import Corruption
from ..data.datasets import SkipReport, VideoDataset, make_loader, write_skipped
from ..errors import InputError
from ..progress import progress_bar
from ..models.config import MODALITIES
from ..models.mbt import MBT
from . import distributed
from .losses import per_example_loss
from .metrics import compute_metrics

METRICS_NAME = "metrics.json"
PER_CLASS_NAME = "per_class.csv"
SKIPPED_NAME = "skipped.csv"  # every video that could not be scored, with its reason


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ... : every video exactly once over all ranks."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@torch.no_grad()
def streams_present(batch: dict[str, Any], modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """For each video of a collated batch, the `modalities` it has (its 'missing' flags are off)."""
    missing = batch.get("missing", {})
    return [tuple(m for m in modalities if m in batch and not (m in missing and bool(missing[m][i])))
            for i in range(batch["size"])]


def missing_flags(batch: dict[str, Any], modalities: Sequence[str]) -> dict[str, torch.Tensor]:
    """The batch's 'missing' flags {m: (B,) bool} for `modalities`. A video that has none of them keeps them all
    (its stand-in frames or silence are scored: there is nothing else to score it from)."""
    missing = batch.get("missing") or {}
    flags = {m: torch.as_tensor(missing[m], dtype=torch.bool) for m in modalities if m in missing}
    if len(flags) == len(modalities) and flags:
        nothing = torch.stack(list(flags.values())).all(dim=0)
        if bool(nothing.any()):
            flags = {m: f & ~nothing for m, f in flags.items()}
    return flags


def predict_batch(model: MBT, batch: dict[str, Any], device: torch.device, clips_per_forward: int = 8,
                  autocast: contextlib.AbstractContextManager | None = None,
                  modalities: Sequence[str] | None = None) -> torch.Tensor:
    """Logits (B, C), float32, of a collated batch. Multi-clip batches ('rgb' (B, N, 3, T, H, W), 'spectrogram'
    (B, N, 1, time, mel)) are averaged over the N clips. A video flagged as lacking a stream is scored without it,
    in the same forward pass as the others (the model masks it per example). `modalities` (default: all of the
    model's in the batch) scores the batch as if only those streams had been given (a stream removed at test
    time)."""
    allowed = model.config.modality_fusion if modalities is None else modalities
    modalities = [m for m in model.config.modality_fusion if m in batch and m in allowed]
    if not modalities:
        raise InputError(f"the batch has none of the modalities {list(allowed)} (it has "
                         f"{[m for m in MODALITIES if m in batch]})")
    multi_clip = batch[modalities[0]].ndim == len(model.config.input_shape(modalities[0])) + 2
    size = batch["size"]
    x = {m: batch[m] for m in modalities}
    flags = missing_flags(batch, modalities)
    clips = x[modalities[0]].shape[1] if multi_clip else 1
    if multi_clip:  # (B, N, ...) -> (B * N, ...), each video's flags repeated for its clips
        x = {m: v.flatten(0, 1) for m, v in x.items()}
        flags = {m: f.repeat_interleave(clips) for m, f in flags.items()}
    outs = []
    for s in range(0, size * clips, clips_per_forward):
        chunk = {m: v[s:s + clips_per_forward].to(device, non_blocking=True) for m, v in x.items()}
        chunk["missing"] = {m: f[s:s + clips_per_forward] for m, f in flags.items()}
        with autocast or contextlib.nullcontext():
            outs.append(model(chunk).logits.float().cpu())
    return torch.cat(outs).view(size, clips, -1).mean(1)  # raw logits averaged over clips


@torch.no_grad()
def predict_dataset(model: MBT, dataset: VideoDataset, device: torch.device, batch_size: int = 4,
                    num_workers: int = 0, clips_per_forward: int = 8, info: distributed.DistInfo | None = None,
                    autocast=None, progress: bool = True, desc: str = "eval"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, SkipReport]:
    """Score every video of `dataset` (this rank's share, then gathered from all ranks).

    Returns logits (N, C), labels (N, C), dataset indices (N,) sorted ascending, and this rank's SkipReport
    (videos that could not be read are left out and listed there).
    """
    logits, labels, index, report = predict_conditions(model, dataset, device, [None], batch_size, num_workers,
                                                       clips_per_forward, info, autocast, progress, desc)
    return logits[None], labels, index, report


def scored_batches(model: MBT, dataset: VideoDataset, device: torch.device,
                   conditions: Sequence[tuple[str, ...] | None] = (None,), batch_size: int = 4, num_workers: int = 0,
                   clips_per_forward: int = 8, sampler: Sampler[int] | None = None, autocast=None,
                   progress: bool = True, desc: str = "eval", report: SkipReport | None = None
                   ) -> Iterator[tuple[dict[str, Any], dict[Any, torch.Tensor]]]:
    """The one loop over a dataset that scores it (evaluation and `mbt predict`): each collated batch that has a
    readable video, with {condition: logits (b, C)} for each condition (a tuple of modalities, None: all). The
    model is in eval mode meanwhile; unreadable videos go to `report`."""
    was_training = model.training
    model.eval()
    loader = make_loader(dataset, batch_size, num_workers=num_workers, sampler=sampler, drop_last=False,
                         shuffle=False)
    try:
        with torch.no_grad():
            for batch in progress_bar(loader, desc=desc, unit="batch", disable=not progress, leave=False):
                if report is not None:
                    report.update(batch)
                if batch["size"] == 0:
                    continue
                yield batch, {c: predict_batch(model, batch, device, clips_per_forward, autocast, modalities=c)
                              for c in conditions}
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_conditions(model: MBT, dataset: VideoDataset, device: torch.device,
                       conditions: Sequence[tuple[str, ...] | None], batch_size: int = 4, num_workers: int = 0,
                       clips_per_forward: int = 8, info: distributed.DistInfo | None = None, autocast=None,
                       progress: bool = True, desc: str = "eval"
                       ) -> tuple[dict[Any, torch.Tensor], torch.Tensor, torch.Tensor, SkipReport]:
    """`predict_dataset` under several test conditions at once: each video is loaded once and scored with each
    condition's modalities (None: all). Returns {condition: logits (N, C)}, labels, indices and the SkipReport."""
    info = info or distributed.DistInfo(device=device)
    sampler = ShardSampler(len(dataset), info.rank, info.world_size)
    report = SkipReport()
    logits: dict[Any, list[torch.Tensor]] = {c: [] for c in conditions}
    labels, indices = [], []
    for batch, scored in scored_batches(model, dataset, device, conditions, batch_size, num_workers,
                                        clips_per_forward, sampler, autocast, progress and info.is_main, desc,
                                        report):
        for c in conditions:
            logits[c].append(scored[c])
        labels.append(batch["label"].float())
        indices.append(batch["index"])
    C = model.config.num_classes
    labels_t = torch.cat(labels) if labels else torch.empty(0, dataset.annotations.num_classes)
    index_t = torch.cat(indices) if indices else torch.empty(0, dtype=torch.long)
    logits_t = [torch.cat(logits[c]) if logits[c] else torch.empty(0, C) for c in conditions]
    gathered = distributed.gather_rows([*logits_t, labels_t, index_t], info)
    order = gathered[-1].argsort()
    return ({c: g[order] for c, g in zip(conditions, gathered)}, gathered[-2][order], gathered[-1][order],
            report)


def score(logits: torch.Tensor, labels: torch.Tensor, config, label_names=None
          ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of (N, C) logits against (N, C) labels for the model's problem type, plus the unsmoothed loss."""
    problem_type = config.task
    if logits.shape[0] == 0:
        raise InputError("no video could be scored (all were skipped or the annotation file is empty)")
    summary, rows = compute_metrics(logits.numpy(), labels.numpy(), problem_type, heads=config.heads,
                                    label_names=label_names or config.label_names)
    loss = per_example_loss(logits, labels, problem_type, config.heads).mean()
    return {"loss": float(loss), **summary}, rows


def write_results(out_dir: str | Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """`metrics.json` (the summary; 'num_skipped' counts the videos left out), `per_class.csv` (one row per class)
    and `skipped.csv` (every video left out, with its reason; written when the summary lists them) in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = dict(summary)
    skipped = summary.pop("skipped_files", None)
    if skipped is not None:
        write_skipped(out_dir / SKIPPED_NAME, skipped)
    metrics_path = out_dir / METRICS_NAME
    metrics_path.write_text(json.dumps(json_ready(summary), indent=2, allow_nan=False) + "\n")
    per_class = out_dir / PER_CLASS_NAME
    with per_class.open("w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return metrics_path, per_class


def evaluate_dataset(model: MBT, annotations: Annotations, data_config: DataConfig, device: torch.device,
                     split: str = "test", batch_size: int = 4, num_workers: int = 0, clips_per_forward: int = 8,
                     on_error: str = "skip", info: distributed.DistInfo | None = None, autocast=None,
                     progress: bool = True, cache: dict | None = None, corruption: Corruption | None = None
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of `model` on `annotations` ('val': the middle clip; 'test': data_config.num_test_clips clips).
    `cache`: a VideoDataset cache (dict) that keeps decoded clips between calls (needs num_workers=0).
    `corruption`: one stream corrupted (`mbt.data.corrupt.Corruption`) in every clip."""
    return evaluate_conditions(model, annotations, data_config, device, [None], split, batch_size, num_workers,
                               clips_per_forward, on_error, info, autocast, progress, cache, corruption)[None]


def evaluate_conditions(model: MBT, annotations: Annotations, data_config: DataConfig, device: torch.device,
                        conditions: Sequence[tuple[str, ...] | None], split: str = "test", batch_size: int = 4,
                        num_workers: int = 0, clips_per_forward: int = 8, on_error: str = "skip",
                        info: distributed.DistInfo | None = None, autocast=None, progress: bool = True,
                        cache: dict | None = None, corruption: Corruption | None = None
                        ) -> dict[Any, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """`evaluate_dataset` under several test conditions, each a tuple of the modalities given to the model (None:
    all), from one pass over the data: every clip is decoded and loaded once. Returns {condition: (summary,
    per-class rows)}."""
    check_labels(model.config, annotations)
    for c in conditions:
        if c is not None:
            model.config.select_modalities(c)  # a ConfigError for a modality the model does not have
    dataset = VideoDataset(annotations, data_config, split=split, on_error=on_error, cache=cache,
                           corruption=corruption)
    logits, labels, _, report = predict_conditions(model, dataset, device, conditions, batch_size, num_workers,
                                                   clips_per_forward, info, autocast, progress, desc=split)
    info = info or distributed.DistInfo(device=device)
    skipped = sorted(distributed.gather_objects(report.skipped, info), key=lambda s: s.index)
    if report.skipped:
        tqdm.write(report.summary(), file=sys.stderr)  # stdout is kept for results
    out = {}
    for c in conditions:
        summary, rows = score(logits[c], labels, model.config, annotations.label_names)
        out[c] = ({**summary, "num_videos": len(annotations.records), "num_skipped": len(skipped),
                   "clips_per_video": data_config.num_test_clips if split == "test" else 1,
                   "clip_average": "logits", "skipped_files": skipped}, rows)
    return out


def check_labels(config, annotations: Annotations) -> None:
    """The annotations must have the model's classes (same count, and the same names when both are known)."""
    if annotations.num_classes != config.num_classes:
        raise InputError(f"{annotations.source}: {annotations.num_classes} classes, but the model has "
                         f"{config.num_classes}; evaluate with the label list the model was trained on")
    if config.label_names is not None and list(config.label_names) != list(annotations.label_names):
        diff = next(i for i, (a, b) in enumerate(zip(config.label_names, annotations.label_names)) if a != b)
        raise InputError(f"{annotations.source}: class {diff} is {annotations.label_names[diff]!r} but the model's "
                         f"class {diff} is {config.label_names[diff]!r}; pass the label list the model was trained "
                         "on (--labels)")
    if config.problem_type is not None:
        kind = annotations.problem_type
        if kind != config.problem_type and not (config.problem_type == "multi_label" and kind == "single_label"):
            raise InputError(f"{annotations.source}: a {kind} task, but the model was trained for "
                             f"{config.problem_type}")


def json_ready(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN or infinity (d-prime of a perfect AUC): written as null
    return x
