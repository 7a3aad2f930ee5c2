"""`mbt explain`: attention-rollout heat maps of one video, drawn over its middle frame and its spectrogram.

Writes to the output folder:
  frame.png        the middle frame of the model's input window with the heat map of its tubelet overlaid and the
                   top labels written on it, axes in input pixels and a colour bar of the relevance; the image
                   itself is (H * s, W * s) pixels for the smallest integer s that makes it at least 384 px wide,
                   inside margins of MARGIN_* pixels;
  tubelets.png     every tubelet's first frame with its heat map, side by side (rgb models);
  spectrogram.png  the log-mel input (time across in seconds, mel bins up) with its heat map and a colour bar;
                   the image is (mel * s_f, time * s_t) pixels with s_t, s_f the smallest integers giving at least
                   384 x 128, inside the same margins;
  explain.json     the top labels, the streams used, the relevance of each stream and of the bottleneck tokens, and
                   the heat maps as nested lists.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.config import DataConfig
from ..data.datasets import VideoDataset
from ..models.config import STREAM
from ..models.mbt import MBT
from .predict import top_k, unlabelled
from .rollout import Rollout, attention_rollout


# Pixels around the heat map of frame.png and spectrogram.png: axes with ticks on the left and bottom, a colour bar
# of the relevance on the right. The heat map itself keeps its exact size inside.
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP, MARGIN_RIGHT = 56, 44, 22, 84


def _figure(width: int, height: int):
    """A matplotlib Figure of exactly width x height pixels with one axes filling it (Agg, no display)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    return fig, ax


def _framed_figure(width: int, height: int):
    """A Figure whose axes hold exactly width x height pixels, with margins for ticks, labels and a colour bar.
    Returns (fig, ax, colour-bar axes)."""
    from matplotlib.figure import Figure

    W, H = width + MARGIN_LEFT + MARGIN_RIGHT, height + MARGIN_BOTTOM + MARGIN_TOP
    fig = Figure(figsize=(W / 100, H / 100), dpi=100)
    ax = fig.add_axes((MARGIN_LEFT / W, MARGIN_BOTTOM / H, width / W, height / H))
    cax = fig.add_axes(((MARGIN_LEFT + width + 10) / W, MARGIN_BOTTOM / H, 12 / W, height / H))
    return fig, ax, cax


def _colour_bar(fig, cax, heat: torch.Tensor) -> None:
    """The 'jet' scale of the overlay, labelled with the relevance values it spans."""
    from matplotlib import cm, colors

    lo, hi = float(heat.min()), float(heat.max())
    mappable = cm.ScalarMappable(norm=colors.Normalize(lo, hi if hi > lo else lo + 1e-12), cmap="jet")
    bar = fig.colorbar(mappable, cax=cax)
    bar.set_label("relevance", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    bar.formatter.set_powerlimits((-2, 2))


def _upsample(heat: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(h, w) patch relevance -> (H, W) by nearest neighbour (each patch keeps its value), scaled to [0, 1]."""
    up = F.interpolate(heat[None, None].float(), size=size, mode="nearest")[0, 0]
    lo, hi = float(up.min()), float(up.max())
    return ((up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)).numpy()


def _overlay(image: np.ndarray, heat: np.ndarray, scale: tuple[int, int], alpha: float = 0.5) -> np.ndarray:
    """Blend a (H, W, 3) image in [0, 1] with a (H, W) heat map in [0, 1] (colormap 'jet'), enlarged by `scale`."""
    from matplotlib import colormaps

    colour = colormaps["jet"](heat)[..., :3]
    blend = np.clip((1 - alpha) * image + alpha * colour, 0.0, 1.0)  # imshow warns about (and clips) anything else
    return np.repeat(np.repeat(blend, scale[0], axis=0), scale[1], axis=1)


def _label_text(top: Sequence[tuple[str, float]]) -> str:
    return "\n".join(f"{label}  {score:.2f}" for label, score in top)


def render_frame(frame: np.ndarray, heat: torch.Tensor, top: Sequence[tuple[str, float]], path: Path,
                 min_width: int = 384) -> tuple[int, int]:
    """Write the frame ((H, W, 3) in [0, 1]) with the heat map ((h, w) over its patches) and the top labels.
    Returns the image's (height, width)."""
    H, W = frame.shape[:2]
    s = max(1, math.ceil(min_width / W))
    img = _overlay(frame, _upsample(heat, (H, W)), (s, s))
    fig, ax, cax = _framed_figure(W * s, H * s)
    ax.imshow(img, interpolation="nearest", aspect="auto", extent=(0, W, H, 0))  # ticks in input pixels
    ax.set_xlabel("x (pixels of the model input)", fontsize=8)
    ax.set_ylabel("y (pixels)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.text(0.02, 0.98, _label_text(top), transform=ax.transAxes, va="top", ha="left", fontsize=10, color="white",
            bbox=dict(facecolor="black", alpha=0.6, edgecolor="none"))
    _colour_bar(fig, cax, heat)
    fig.savefig(path, dpi=100)
    return H * s + MARGIN_BOTTOM + MARGIN_TOP, W * s + MARGIN_LEFT + MARGIN_RIGHT


def render_tubelets(frames: np.ndarray, heat: torch.Tensor, tubelet: int, path: Path, height: int = 192
                    ) -> tuple[int, int]:
    """Each tubelet's first frame (frames (T, H, W, 3) in [0, 1]) with its heat map (heat (t, h, w)), in a row."""
    T, H, W = frames.shape[:3]
    s = max(1, math.ceil(height / H))
    tiles = [_overlay(frames[i * tubelet], _upsample(heat[i], (H, W)), (s, s)) for i in range(heat.shape[0])]
    row = np.concatenate(tiles, axis=1)
    fig, ax = _figure(row.shape[1], row.shape[0])
    ax.imshow(row, interpolation="nearest", aspect="auto")
    for i in range(len(tiles)):
        ax.text((i + 0.03) / len(tiles), 0.97, f"frames {i * tubelet}-{(i + 1) * tubelet - 1}",
                transform=ax.transAxes, va="top", fontsize=8, color="white",
                bbox=dict(facecolor="black", alpha=0.6, edgecolor="none"))
    fig.savefig(path, dpi=100)
    return row.shape[0], row.shape[1]


def render_spectrogram(spec: np.ndarray, heat: torch.Tensor, path: Path, min_size: tuple[int, int] = (128, 384),
                       frames_per_second: float = 100.0) -> tuple[int, int]:
    """The (time, mel) spectrogram with the (time', mel') heat map, time across (in seconds of the window) and low
    frequencies at the bottom (mel bins), with a colour bar of the relevance. Returns the image's (height, width)."""
    time_, mel = spec.shape
    s_f, s_t = max(1, math.ceil(min_size[0] / mel)), max(1, math.ceil(min_size[1] / time_))
    grey = (spec - spec.min()) / max(float(spec.max() - spec.min()), 1e-9)
    image = np.repeat(grey.T[::-1, :, None], 3, axis=2)  # (mel, time, 3), high frequencies on top
    heat_up = _upsample(heat.T.flip(0), (mel, time_))
    img = _overlay(image, heat_up, (s_f, s_t), alpha=0.45)
    fig, ax, cax = _framed_figure(time_ * s_t, mel * s_f)
    ax.imshow(img, interpolation="nearest", aspect="auto", extent=(0, time_ / frames_per_second, 0, mel))
    ax.set_xlabel("time in the window (s)", fontsize=8)
    ax.set_ylabel("mel bin", fontsize=8)
    ax.tick_params(labelsize=7)
    _colour_bar(fig, cax, heat)
    fig.savefig(path, dpi=100)
    return mel * s_f + MARGIN_BOTTOM + MARGIN_TOP, time_ * s_t + MARGIN_LEFT + MARGIN_RIGHT


def load_clip(path: str | Path, data_config: DataConfig, model: MBT) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """The model's input window from the middle of a video ({modality: (1, ...)}), and the streams it has."""
    ann = unlabelled([path], model, "explain")
    dc = dataclasses.replace(data_config, missing_stream="flag")
    sample = VideoDataset(ann, dc, split="val", on_error="raise")[0]
    present = tuple(m for m in model.config.modality_fusion if m in sample and not sample["missing"].get(m, False))
    return {m: sample[m][None] for m in present}, present


def explain(model: MBT, inputs: dict[str, torch.Tensor], out_dir: str | Path, k: int = 3,
            source: str = "", frames_per_second: float = 100.0) -> dict[str, Any]:
    """Attention rollout of one example (inputs {modality: (1, ...)}) and the heat-map PNGs in `out_dir`.
    Returns the summary written to explain.json (with the written files)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    r: Rollout = attention_rollout(model, inputs)
    top = top_k(r.logits, model, k)[0]
    files: dict[str, list[int]] = {}
    if "rgb" in r.maps:
        frames = ((inputs["rgb"][0].permute(1, 2, 3, 0).float() + 1) / 2).clamp(0, 1).numpy()  # (T, H, W, 3)
        heat = r.maps["rgb"][0]  # (t, h, w)
        tubelet = frames.shape[0] // heat.shape[0]
        mid = frames.shape[0] // 2
        files["frame.png"] = list(render_frame(frames[mid], heat[min(mid // tubelet, heat.shape[0] - 1)], top,
                                               out / "frame.png"))
        files["tubelets.png"] = list(render_tubelets(frames, heat, tubelet, out / "tubelets.png"))
    if "spectrogram" in r.maps:
        spec = inputs["spectrogram"][0, 0].float().numpy()  # (time, mel)
        files["spectrogram.png"] = list(render_spectrogram(spec, r.maps["spectrogram"][0], out / "spectrogram.png",
                                                           frames_per_second=frames_per_second))
    relevance = {STREAM[m]: float(r.relevance[0, r.spans[m]].sum()) for m in r.maps}
    if r.bottleneck is not None:
        relevance["bottleneck"] = float(r.bottleneck[0].sum())
    summary = {"source": source, "streams": [STREAM[m] for m in r.maps],
               "top": [{"label": l, "score": s} for l, s in top], "relevance": relevance,
               "maps": {STREAM[m]: v[0].tolist() for m, v in r.maps.items()},
               "grids": {STREAM[m]: list(v.shape[1:]) for m, v in r.maps.items()}, "files": files}
    (out / "explain.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def explain_video(model: MBT, path: str | Path, data_config: DataConfig, out_dir: str | Path, k: int = 3
                  ) -> dict[str, Any]:
    """`explain` on the middle window of a video file."""
    inputs, _ = load_clip(path, data_config, model)
    return explain(model, inputs, out_dir, k, source=str(path), frames_per_second=data_config.spec_rate)


__all__ = ["explain", "explain_video", "load_clip", "render_frame", "render_spectrogram", "render_tubelets"]
