"""Inference on new videos or arrays: top-k labels with scores, from a model directory.

Scores follow the model's problem type: softmax over classes (single-label), a sigmoid per class (multi-label),
a softmax per head (multi-head, e.g. EPIC verb and noun). Multi-clip prediction averages the raw logits over the
clips before the scores are computed, as `mbt eval` does.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from ..data.annotations import Annotations, Record
from ..data.config import DataConfig
from ..data.datasets import SkipReport, VideoDataset
from ..engine.evaluate import scored_batches, streams_present
from ..errors import InputError, MissingFileError
from ..models.config import STREAM
from ..models.mbt import MBT

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts", ".mts",
                    ".m2ts", ".3gp", ".ogv", ".mxf", ".vob", ".h264", ".hevc")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".oga", ".opus", ".wma", ".aiff", ".aif")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS


@dataclass
class Prediction:
    """The prediction for one video or array example.

    Attributes:
      source: the file path, or the example's index for arrays.
      modalities: the streams the prediction used (a file without audio is scored from its frames alone).
      top: [(label, score)], best first; for multi-head models, the top of each head in turn (labels 'head:name').
      logits: (num_classes,) raw logits, averaged over the clips.
    """

    source: str
    modalities: tuple[str, ...]
    top: list[tuple[str, float]]
    logits: list[float] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "streams": [STREAM[m] for m in self.modalities],
                "top": [{"label": l, "score": s} for l, s in self.top]}


def label_names(model: MBT) -> list[str]:
    cfg = model.config
    return list(cfg.label_names) if cfg.label_names else [f"class_{i}" for i in range(cfg.num_classes)]


def scores(logits: Tensor, model: MBT) -> Tensor:
    """(N, C) logits -> (N, C) scores for the model's problem type."""
    cfg = model.config
    kind = cfg.task
    if kind == "single_label":
        return logits.softmax(dim=-1)
    if kind == "multi_head":
        return torch.cat([part.softmax(dim=-1) for part in logits.split(list(cfg.heads.values()), dim=-1)], dim=-1)
    return logits.sigmoid()


def top_k(logits: Tensor, model: MBT, k: int = 5) -> list[list[tuple[str, float]]]:
    """The k best (label, score) of each row of (N, C) logits; per head for multi-head models."""
    names, cfg = label_names(model), model.config
    probs = scores(logits.float(), model)
    groups = [(0, cfg.num_classes)]
    if cfg.task == "multi_head" and cfg.heads:
        groups, start = [], 0
        for size in cfg.heads.values():
            groups.append((start, start + size))
            start += size
    result = []
    for row in probs:
        best: list[tuple[str, float]] = []
        for a, b in groups:
            values, idx = row[a:b].topk(min(k, b - a))
            best += [(names[a + int(i)], float(v)) for v, i in zip(values, idx)]
        result.append(best)
    return result


@torch.no_grad()
def predict_arrays(model: MBT, inputs: Mapping[str, Tensor | None], k: int = 5) -> list[Prediction]:
    """Predictions for a batch of prepared inputs ({modality: (B, ...)} as `MBT.forward` takes; a modality may be
    left out). Arrays must already be preprocessed (rgb in [-1, 1], standardised log-mel)."""
    model.eval()
    inputs = {m: torch.as_tensor(v) for m, v in inputs.items() if v is not None}
    logits = model(inputs).logits.float()
    present = tuple(model.present_modalities(inputs))
    return [Prediction(str(i), present, best, row.tolist())
            for i, (best, row) in enumerate(zip(top_k(logits, model, k), logits))]


def unlabelled(files: Sequence[str | Path], model: MBT, source: str) -> Annotations:
    """Annotations for files with no labels (prediction), with the model's label names."""
    return Annotations([Record(str(f), ()) for f in files], label_names(model), multi_label=False, source=source)


def find_media(paths: Iterable[str | Path]) -> tuple[list[str], list[str]]:
    """Files as given, and the media files of folders (video and audio, by extension, recursively, sorted).
    Returns (files, problems): a path that does not exist, or a folder with no media file, is a one-line problem
    naming it, and the other paths are still listed."""
    found: list[str] = []
    problems: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in MEDIA_EXTENSIONS)
            if not files:
                problems.append(f"{p}: a folder with no media file (video: {' '.join(VIDEO_EXTENSIONS)}; audio: "
                                f"{' '.join(AUDIO_EXTENSIONS)})")
            found += [str(f) for f in files]
        elif p.is_file():
            found.append(str(p))
        else:
            problems.append(f"{p}: no such file or folder")
    return found, problems


def find_videos(paths: Iterable[str | Path]) -> list[str]:
    """`find_media`, with a path that has no media raising MissingFileError naming it."""
    found, problems = find_media(paths)
    if problems:
        raise MissingFileError("; ".join(problems))
    return found


@torch.no_grad()
def predict_files(model: MBT, paths: Sequence[str | Path], data_config: DataConfig, clips: int = 1, k: int = 5,
                  batch_size: int = 8, num_workers: int = 0, device: str | torch.device = "cpu",
                  progress: bool = True, files: Sequence[str] | None = None) -> tuple[list[Prediction], SkipReport]:
    """Top-k predictions for media files (`find_videos` expands folders; or give `files` already found): with
    `clips` = 1 the middle window of each file (the window `mbt explain` shows, so both give the same scores),
    else the logits of `clips` windows spread over it (the test-time sampling of the data config), averaged.
    Files that cannot be read are skipped and listed in the returned SkipReport; a file without an audio (or
    video) track is scored with the stream it has."""
    device = torch.device(device)
    model.eval().to(device)
    files = list(files) if files is not None else find_videos(paths)
    ann = unlabelled(files, model, "predict")
    dc = dataclasses.replace(data_config, num_test_clips=clips, missing_stream="flag")
    # One clip: the middle window, the one `mbt explain` shows (and validation scores); several: spread evenly.
    dataset = VideoDataset(ann, dc, split="val" if clips == 1 else "test", on_error="skip")
    report, out = SkipReport(), []
    for batch, scored in scored_batches(model, dataset, device, batch_size=batch_size, num_workers=num_workers,
                                        progress=progress, desc="predict", report=report):
        logits = scored[None]
        present = streams_present(batch, model.config.modality_fusion)
        for i, (best, row) in enumerate(zip(top_k(logits, model, k), logits)):
            out.append(Prediction(batch["path"][i], present[i], best, row.tolist()))
    return out, report


def write_predictions(predictions: Sequence[Prediction], path: str | Path) -> Path:
    """Write predictions as JSON (a list of {source, streams, top: [{label, score}]}) or CSV (one row per video
    and rank: source, streams, rank, label, score), by the file's extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps([p.to_dict() for p in predictions], indent=2) + "\n")
    elif path.suffix.lower() == ".csv":
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["source", "streams", "rank", "label", "score"])
            for p in predictions:
                streams = "+".join(STREAM[m] for m in p.modalities)
                for rank, (label, score) in enumerate(p.top, start=1):
                    w.writerow([p.source, streams, rank, label, f"{score:.6f}"])
    else:
        raise InputError(f"{path}: unknown output format {path.suffix!r}; use .json or .csv")
    return path


def format_table(predictions: Sequence[Prediction], all_streams: Sequence[str]) -> str:
    """A plain-text table: video, the streams used (flagged when one is missing), the top labels with scores."""
    rows = []
    for p in predictions:
        streams = "+".join(STREAM[m] for m in p.modalities)
        if len(p.modalities) < len(all_streams):
            lacking = [STREAM[m] for m in all_streams if m not in p.modalities]
            streams += f" (no {'/'.join(lacking)} track)"
        rows.append((p.source, streams, ", ".join(f"{l} {s:.3f}" for l, s in p.top)))
    head = ("file", "streams", "top labels (score)")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(2)]
    lines = [f"{head[0]:<{widths[0]}}  {head[1]:<{widths[1]}}  {head[2]}"]
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


__all__ = ["Prediction", "predict_files", "predict_arrays", "find_videos", "find_media", "MEDIA_EXTENSIONS", "top_k",
           "scores", "write_predictions", "format_table", "label_names", "VIDEO_EXTENSIONS"]
