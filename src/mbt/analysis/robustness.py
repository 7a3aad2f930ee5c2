"""How a model holds up when a stream is removed or corrupted (`mbt eval --robustness`): one evaluation per test
condition, a table (`robustness.json`) and a plot (`robustness.png`).

Conditions: both streams; each stream removed (the model runs without it); each corruption of
`mbt.data.corrupt.ROBUSTNESS_STRENGTHS` at its three strengths (audio noise at 20, 10 and 0 dB SNR; video noise,
blur and occlusion). A model with one stream gets only the conditions of that stream.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.annotations import Annotations
from ..data.config import DataConfig
from ..data.corrupt import ROBUSTNESS_STRENGTHS, STRENGTH_UNITS, Corruption
from ..engine import distributed
from ..engine.evaluate import evaluate_conditions, evaluate_dataset, json_ready
from ..errors import DependencyError
from ..models.config import STREAM
from ..models.mbt import MBT

ROBUSTNESS_JSON = "robustness.json"
ROBUSTNESS_PNG = "robustness.png"


def headline_metric(summary: dict[str, Any]) -> tuple[str, float]:
    """The metric a robustness table reports: top-1 (single-label), action top-1 (EPIC) or mAP (multi-label)."""
    for key in ("top1", "action_top1", "mAP"):
        if key in summary:
            return key, float(summary[key])
    raise KeyError(f"no headline metric in {sorted(summary)}")


def robustness(model: MBT, annotations: Annotations, data_config: DataConfig, device: torch.device,
               batch_size: int = 4, num_workers: int = 0, clips_per_forward: int = 8,
               info: distributed.DistInfo | None = None, progress: bool = True,
               strengths: dict[tuple[str, str], Sequence[float]] | None = None, cache: dict | None = None
               ) -> list[dict[str, Any]]:
    """One row per condition: {'condition', 'stream', 'kind', 'strength', 'unit', 'metric', 'value', 'summary'}.
    `strengths`: {(stream, kind): levels} (default ROBUSTNESS_STRENGTHS). The decoded clips are kept in memory
    between conditions when there are no workers (decoding is paid once; `cache`, a VideoDataset cache, may bring
    clips decoded before)."""
    strengths = ROBUSTNESS_STRENGTHS if strengths is None else strengths
    full = tuple(model.config.modality_fusion)
    if cache is None and num_workers == 0:
        cache = {}
    conditions: list[tuple[str, ...] | None] = [None] + ([tuple(o for o in full if o != m) for m in full]
                                                         if len(full) > 1 else [])
    scored = evaluate_conditions(model, annotations, data_config, device, conditions, "test", batch_size,
                                 num_workers, clips_per_forward, "skip", info, None, progress, cache)
    rows = []
    for c in conditions:
        metric, value = headline_metric(scored[c][0])
        removed = [m for m in full if c is not None and m not in c]
        rows.append({"condition": "all streams" if c is None else f"{STREAM[removed[0]]} removed",
                     "stream": None if c is None else STREAM[removed[0]], "kind": None if c is None else "removed",
                     "strength": None, "unit": None, "metric": metric, "value": value,
                     "summary": _compact(scored[c][0])})
    streams = {STREAM[m] for m in full}
    for (stream, kind), levels in strengths.items():
        if stream not in streams:
            continue
        for level in levels:
            corruption = Corruption(stream, kind, float(level))
            summary, _ = evaluate_dataset(model, annotations, data_config, device, "test", batch_size, num_workers,
                                          clips_per_forward, "skip", info, None, progress, cache, corruption)
            metric, value = headline_metric(summary)
            rows.append({"condition": corruption.describe(), "stream": stream, "kind": kind,
                         "strength": float(level), "unit": STRENGTH_UNITS[(stream, kind)], "metric": metric,
                         "value": value, "summary": _compact(summary)})
    return rows


def _compact(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: condition and the headline metric (in %)."""
    metric = rows[0]["metric"] if rows else "top1"
    lines = [f"| condition | {metric} (%) |", "|---|---:|"]
    lines += [f"| {r['condition']} | {100 * r['value']:.1f} |" for r in rows]
    return "\n".join(lines)


def write_robustness(rows: Sequence[dict[str, Any]], out_dir: str | Path, title: str | None = None
                     ) -> tuple[Path, Path]:
    """`robustness.json` (the rows) and `robustness.png` (the plot) in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / ROBUSTNESS_JSON
    json_path.write_text(json.dumps(json_ready(list(rows)), indent=2, allow_nan=False) + "\n")
    return json_path, plot_robustness(rows, out_dir / ROBUSTNESS_PNG, title)


def plot_robustness(rows: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """One panel per corruption (the headline metric against strength, mild to severe), with the all-streams
    score and each stream-removed score as horizontal lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DependencyError("the robustness plot needs matplotlib: pip install -e \".[plot]\" (the table is in "
                              f"{ROBUSTNESS_JSON})") from None
    kinds = list(dict.fromkeys((r["stream"], r["kind"]) for r in rows if r["strength"] is not None))
    fixed = [r for r in rows if r["strength"] is None]
    metric = rows[0]["metric"] if rows else "top1"
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(3.2 * max(len(kinds), 1), 3.2), squeeze=False)
    colours = {"all streams": "#2a2a2a", "audio removed": "#4C72B0", "video removed": "#DD8452"}
    for ax, (stream, kind) in zip(axes[0], kinds or [(None, None)]):
        pts = [r for r in rows if (r["stream"], r["kind"]) == (stream, kind) and r["strength"] is not None]
        if pts:
            ax.plot(range(len(pts)), [100 * r["value"] for r in pts], "o-", color="#C44E52",
                    label=f"{stream} {kind}")
            ax.set_xticks(range(len(pts)), [f"{r['strength']:g}" for r in pts])
            ax.set_xlabel(f"{stream} {kind} ({pts[0]['unit']})")
        for r in fixed:
            ax.axhline(100 * r["value"], ls="--" if r["kind"] else "-", lw=1,
                       color=colours.get(r["condition"], "grey"), label=r["condition"])
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{metric} (%)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title or "Robustness: streams removed and corrupted", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


__all__ = ["robustness", "write_robustness", "plot_robustness", "format_table", "headline_metric",
           "ROBUSTNESS_JSON", "ROBUSTNESS_PNG"]
