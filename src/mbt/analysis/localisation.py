"""Where a model's attention falls on AV-Digits clips: the share of the attention-rollout relevance that lies on the
digit (video) and on the spoken word (audio), against what a uniform map would score.

The paper's heat-map claim is that attention falls on the source of the class and that bottleneck fusion localises
it more tightly than vanilla fusion. AV-Digits writes the ground truth of every clip (metadata/<split>.jsonl): the
digit's box in each written frame and the spoken word's span in seconds. This module scores a model against it:

  inside_shares(maps, boxes, span, geometry)    a batch of rollout maps -> shares inside the box / span (pure)
  localisation(model, data_config, data_dir)    every clip of a split, read as the model is evaluated

How the model's patches lie on the written clip (`Geometry`, from the model and data configs):
  * rgb: slot j of the rollout map's time axis covers the model input frames of one tubelet (`rgb_patch_size[0]`
    consecutive frames with '3d_conv'; the one sampled frame `rgb_frame_indices[j]` with 'temporal_sampling');
    patch (i, k) covers model pixels [i * ph, (i + 1) * ph) x [k * pw, (k + 1) * pw). The model's pixels are the
    written frame resized (the shorter side to `min_resize`, upscaled if smaller than the crop) and centre-cropped
    (`VideoTransform.plan` in eval mode), so a written pixel coordinate x maps to x * (resized width / written
    width) - crop left, and likewise for y. Pixels are areas: pixel p covers [p, p + 1), as the generator's boxes
    and FFmpeg's resize count them. Each model input frame is a written frame chosen by its time (the frame on
    screen at that time, as the decoder picks it), and uses that frame's own box.
  * spectrogram: frame k of the window is the analysis window of samples [k * hop, k * hop + length) from the
    window's first sample; it stands for the hop-long interval centred on that analysis window, so the frames tile
    time without overlap: [length / 2 - hop / 2 + k * hop, + hop) seconds from the window's first sample. Patch p
    covers `spectrogram_patch_size[0]` consecutive frames; the mel axis carries no time and is summed.
Partial overlaps count fractionally: a patch half inside the box contributes half its relevance.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..data.annotations import read_annotations
from ..data.config import DataConfig
from ..data.datasets import VideoDataset, collate
from ..data.transforms import VideoTransform
from ..errors import InputError, MissingFileError
from ..models.config import STREAM, MBTConfig
from ..models.mbt import MBT
from ..progress import progress_bar
from .rollout import attention_rollout

MANIFEST = "avdigits.json"  # mbt.avdigits.generator.MANIFEST: written last, so a folder with it is complete
# The decoder's tolerance (MediaReader._collect): a frame shown at t counts as on screen at any time >= t - EPS.
FRAME_EPS = 1e-6


@dataclass(frozen=True)
class Geometry:
    """How a model's patch grids lie on the written clip (see the module docstring). Build it with `Geometry.of`.

    Attributes:
      image_size: (H, W) pixels of the frames the model sees.
      rgb_patch: (h, w) model pixels of one patch.
      rgb_slots: for each slot of the rgb map's time axis, the model input frames (0 .. num_frames - 1) it covers.
      frame_scale: (sy, sx): model (resized) pixels per written pixel.
      crop_offset: (top, left) of the crop, in resized pixels.
      spec_frames: spectrogram frames covered by the patch grid (time patches * frames per patch).
      spec_patch: spectrogram frames per patch along time.
      spec_hop: seconds between spectrogram frames.
      spec_centre: seconds from the window's first sample to the centre of frame 0's analysis window.
    """

    image_size: tuple[int, int]
    rgb_patch: tuple[int, int]
    rgb_slots: tuple[tuple[int, ...], ...]
    frame_scale: tuple[float, float]
    crop_offset: tuple[int, int]
    spec_frames: int
    spec_patch: int
    spec_hop: float
    spec_centre: float

    @classmethod
    def of(cls, model_config: MBTConfig, data_config: DataConfig, frame_size: tuple[int, int]) -> "Geometry":
        """The geometry of `model_config` fed by `data_config` (checked to fit) from written frames of
        `frame_size` = (height, width) pixels."""
        data_config.check_model(model_config)
        c = model_config
        pt, ph, pw = c.rgb_patch_size
        if c.temporal_encoding == "3d_conv":
            # The tubelet embedding has stride pt: slot j is frames j*pt .. j*pt+pt-1 (a remainder is dropped).
            slots = tuple(tuple(range(j * pt, (j + 1) * pt)) for j in range(c.num_frames // pt))
        else:  # one frame per slot: rollout unstacks the sampled frames into the map's time axis
            slots = tuple((i,) for i in c.rgb_frame_indices)
        H, W = (int(v) for v in frame_size)
        # The eval plan the dataset uses (shorter side to min_resize, upscaled to the crop if smaller, centre crop).
        plan = VideoTransform(data_config.crop_size, train=False, min_resize=data_config.min_resize).plan(H, W)
        fe = data_config.front_end
        g = fe.geometry  # integer samples per frame and per hop, as the features are computed
        return cls(
            image_size=tuple(c.image_size), rgb_patch=(ph, pw), rgb_slots=slots,
            frame_scale=(plan.size[0] / H, plan.size[1] / W), crop_offset=(plan.box[0], plan.box[1]),
            spec_frames=(c.spectrogram_shape[0] // c.spectrogram_patch_size[0]) * c.spectrogram_patch_size[0],
            spec_patch=c.spectrogram_patch_size[0], spec_hop=g.frame_shift / fe.sample_rate,
            spec_centre=0.5 * g.frame_length / fe.sample_rate)

    # ------------------------------------------------------------------ per-patch fractions
    def box_fractions(self, boxes: Tensor) -> Tensor:
        """(B, num_frames, 4) boxes [x0, y0, x1, y1] in written pixels, one per model input frame -> (B, t, h, w):
        the fraction of each tubelet's pixels (over its patch and its frames) that lies inside the box."""
        boxes = boxes.to(torch.float64)
        sy, sx = self.frame_scale
        top, left = self.crop_offset
        x0, x1 = boxes[..., 0] * sx - left, boxes[..., 2] * sx - left
        y0, y1 = boxes[..., 1] * sy - top, boxes[..., 3] * sy - top
        ph, pw = self.rgb_patch
        fy = _overlap(y0, y1, self.image_size[0] // ph, ph)  # (B, T, h)
        fx = _overlap(x0, x1, self.image_size[1] // pw, pw)  # (B, T, w)
        frac = fy[..., :, None] * fx[..., None, :]  # (B, T, h, w): a box is a product of its two intervals
        return torch.stack([frac[:, list(frames)].mean(dim=1) for frames in self.rgb_slots], dim=1)

    def span_fractions(self, span: Tensor) -> Tensor:
        """(B, 2) or (B, K, 2) spans [start, end) in seconds from the window's first sample (K disjoint pieces:
        a window that wraps around the clip end sees the word more than once) -> (B, time_patches): the fraction
        of each patch's time inside the span."""
        span = span.to(torch.float64)
        if span.ndim == 2:
            span = span[:, None]
        lo = self.spec_centre - 0.5 * self.spec_hop  # where frame 0's interval starts
        frames = _overlap(span[..., 0] - lo, span[..., 1] - lo, self.spec_frames, self.spec_hop)  # (B, K, F)
        frac = frames.sum(dim=1).clamp(max=1.0)
        return frac.view(frac.shape[0], -1, self.spec_patch).mean(dim=-1)


def _overlap(lo: Tensor, hi: Tensor, n: int, step: float) -> Tensor:
    """The fraction of each of n cells [i * step, (i + 1) * step) that lies in [lo, hi): (...) -> (..., n)."""
    edges = torch.arange(n, dtype=torch.float64) * step
    inside = torch.minimum(hi[..., None], edges + step) - torch.maximum(lo[..., None], edges)
    return inside.clamp(min=0.0) / step


def inside_shares(maps: Mapping[str, Tensor], boxes: Tensor | None, span: Tensor | None,
                  geometry: Geometry) -> dict[str, Tensor]:
    """The share of each clip's relevance that falls on the ground truth, and what a uniform map would score.

    Args:
      maps: rollout maps {'rgb': (B, t, h, w), 'spectrogram': (B, time_patches, mel_patches)} (either or both).
        Each is normalised to sum 1 per clip here: the share is within the modality.
      boxes: (B, num_frames, 4) digit boxes [x0, y0, x1, y1] in written pixels, one per model input frame (the box
        of the written frame that input frame shows); needed for 'rgb'.
      span: (B, 2) or (B, K, 2) the word's span [start, end) in seconds from the spectrogram window's first sample
        (see `Geometry.span_fractions`); needed for 'spectrogram'.
      geometry: `Geometry.of(model.config, data_config, frame_size)`.

    Returns {m: (B,) share of the relevance inside, m + '_chance': (B,) the share of a uniform map (the box's area
    fraction averaged over the frames, the span's fraction of the window)}, float64, for each modality in `maps`.
    """
    out: dict[str, Tensor] = {}
    if "rgb" in maps:
        if boxes is None:
            raise InputError("inside_shares: an rgb map needs the digit boxes (B, num_frames, 4)")
        frac = geometry.box_fractions(boxes)  # (B, t, h, w)
        out["rgb"], out["rgb_chance"] = _share(maps["rgb"], frac, "rgb")
    if "spectrogram" in maps:
        if span is None:
            raise InputError("inside_shares: a spectrogram map needs the word's span (B, 2)")
        frac = geometry.span_fractions(span)  # (B, time_patches)
        # The mel axis carries no time: the relevance of a time patch is its column's sum.
        heat = maps["spectrogram"].to(torch.float64).sum(dim=-1)
        out["spectrogram"], out["spectrogram_chance"] = _share(heat, frac, "spectrogram")
    return out


def _share(heat: Tensor, frac: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """(B, *grid) relevance and (B, *grid) inside fractions -> (share inside, uniform share), each (B,)."""
    if tuple(heat.shape) != tuple(frac.shape):
        raise InputError(f"inside_shares: the {name} map is {tuple(heat.shape)} but the geometry gives a grid of "
                         f"{tuple(frac.shape)}")
    heat = heat.to(torch.float64).flatten(1)
    frac = frac.flatten(1)
    heat = heat / heat.sum(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)
    return (heat * frac).sum(dim=1), frac.mean(dim=1)


# ---------------------------------------------------------------------------------------------------- clips
class _Spy:
    """A reader that passes everything to `reader` and records each `frames` request (what the dataset decodes)."""

    def __init__(self, reader: Any, log: list[dict[str, Any]]) -> None:
        self._reader, self._log = reader, log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def frames(self, times: Sequence[float], size: tuple[int, int] | None = None,
               crop: tuple[int, int, int, int] | None = None):
        v = self._reader.info.video
        self._log.append({"times": [float(t) for t in times], "size": size, "crop": crop,
                          "frame_size": (v.height, v.width), "video_start": v.start})
        return self._reader.frames(times, size=size, crop=crop)


class _TracedDataset(VideoDataset):
    """`VideoDataset` that also says, per sample ('windows'), where each window came from: the times and sizes its
    frames were decoded at and the (start, offset, length) its audio was cut with. The samples are unchanged."""

    def load(self, index: int) -> dict[str, Any]:
        self._windows: dict[str, list] = {"rgb": [], "spectrogram": []}
        sample = super().load(index)
        sample["windows"] = self._windows
        return sample

    def _rgb(self, reader, start, offset, length, rng):
        return super()._rgb(_Spy(reader, self._windows["rgb"]), start, offset, length, rng)

    def _waveform(self, reader, start, offset, length):
        self._windows["spectrogram"].append({"start": start, "offset": offset, "length": length})
        return super()._waveform(reader, start, offset, length)


def read_metadata(data_dir: str | Path, split: str) -> dict[str, dict[str, Any]]:
    """{file (relative to data_dir, e.g. 'test/test_00000.mp4'): metadata row} of an AV-Digits split."""
    path = Path(data_dir) / "metadata" / f"{split}.jsonl"
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file; localisation needs the per-clip ground truth that "
                               "`mbt data avdigits` writes there")
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["file"]] = row
    return rows


@dataclass(frozen=True)
class ClipGeometry:
    """How an AV-Digits dataset wrote its clips: square frames of `size` pixels at `fps` frames per second."""

    size: int
    fps: float


def read_clip_geometry(data_dir: str | Path) -> ClipGeometry:
    """The frame size and rate of an AV-Digits folder, from its manifest (avdigits.json, `config`). Read here rather
    than through mbt.avdigits, which sits above analysis."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file; give a folder written by `mbt data avdigits`")
    config = json.loads(path.read_text()).get("config", {})
    missing = [k for k in ("size", "fps") if k not in config]
    if missing:
        raise InputError(f"{path}: the manifest's config has no {' or '.join(missing)}")
    return ClipGeometry(int(config["size"]), float(config["fps"]))


def _clip_key(path: str, data_dir: Path, rows: Mapping[str, Any], metadata: Path) -> str:
    p = Path(path)
    for base in (data_dir, data_dir.resolve()):
        for q in (p, p.resolve()):
            try:
                key = q.relative_to(base).as_posix()
            except ValueError:
                continue
            if key in rows:
                return key
    raise InputError(f"{path}: no ground truth for this clip in {metadata}")


def _frame_index(t: float, video_start: float, fps: float, n: int) -> int:
    """The written frame on screen at time t (the decoder's rule: the last frame shown at or before t; before the
    first frame the first stands in, after the last the last stays)."""
    return min(max(int(math.floor((t - video_start) * fps + FRAME_EPS * fps)), 0), n - 1)


def _word_pieces(window: Mapping[str, Any], onset: float, offset: float, data_config: DataConfig,
                 ) -> list[tuple[float, float]]:
    """The word's span [onset, offset) (file seconds) in seconds from the window's first sample. The dataset cuts
    the window from sample offset * hop of the clip, wrapping at the clip's `length` frames (VideoDataset._waveform):
    window sample j is clip sample (offset * hop + j) mod (length * hop), so the word recurs every period."""
    fe = data_config.front_end
    hop, sr = fe.geometry.frame_shift, fe.sample_rate
    u0 = window["offset"] * hop / sr  # the window's first sample, in clip seconds, before wrapping
    period = window["length"] * hop / sr
    span = data_config.window_samples() / sr
    on, off = onset - window["start"] - u0, offset - window["start"] - u0
    return [(on + j * period, off + j * period) for j in range(int(math.ceil((u0 + span) / period)) + 1)]


def localisation(model: MBT, data_config: DataConfig, data_dir: str | Path, split: str = "test",
                 limit: int | None = None, batch_size: int = 32, progress: bool = False) -> dict[str, Any]:
    """Attention rollout of `model` on the clips of an AV-Digits split, scored against the ground truth.

    The clips are read as `mbt eval` reads a test set (VideoDataset in 'test' mode: `num_test_clips` windows per
    clip, no augmentation), so the maps are of exactly the frames and audio the model classifies. Which written
    frame each input frame is, and where the audio window starts, is taken from what the dataset decoded. With
    several windows per clip the shares are averaged over them.

    Args:
      model, data_config: as `mbt.data.config.load_pretrained(model_dir)` gives them.
      data_dir: an AV-Digits folder (avdigits.json, <split>.csv, metadata/<split>.jsonl).
      split: 'train' or 'test'.
      limit: only the first `limit` clips of the split.

    Returns {'files': [...], 'frames': [[written frame index per input frame] per window] per clip, and for each
    modality m of the model: m: [share inside per clip], m + '_chance': [uniform map's share per clip]}.
    """
    data_dir = Path(data_dir)
    avd = read_clip_geometry(data_dir)
    rows = read_metadata(data_dir, split)
    metadata = data_dir / "metadata" / f"{split}.jsonl"
    modalities = tuple(model.config.modality_fusion)
    dc = dataclasses.replace(data_config, modalities=modalities)  # decode only what the model takes
    geometry = Geometry.of(model.config, dc, (avd.size, avd.size))
    ann = read_annotations(data_dir / f"{split}.csv")
    if limit is not None:
        ann = dataclasses.replace(ann, records=ann.records[:limit])
    dataset = _TracedDataset(ann, dc, split="test", on_error="raise")
    result: dict[str, Any] = {"files": [], "frames": []}
    for m in modalities:
        result[m], result[m + "_chance"] = [], []
    starts = range(0, len(dataset), batch_size)
    for s in progress_bar(starts, desc="localisation", unit="batch", disable=not progress):
        samples = [dataset[i] for i in range(s, min(s + batch_size, len(dataset)))]
        boxes, spans = [], []
        for sample in samples:
            key = _clip_key(sample["path"], data_dir, rows, metadata)
            row = rows[key]
            gone = [STREAM[m] for m, flag in sample["missing"].items() if flag]
            if gone:
                raise InputError(f"{sample['path']}: the clip has no {' or '.join(gone)} stream; localisation "
                                 "needs every stream the model takes")
            result["files"].append(key)
            frames = []
            for w in sample["windows"]["rgb"]:
                _check_frames(w, geometry, (avd.size, avd.size), sample["path"])
                idx = [_frame_index(t, w["video_start"], avd.fps, len(row["digit_boxes"])) for t in w["times"]]
                frames.append(idx)
                boxes.append(torch.tensor([row["digit_boxes"][i] for i in idx], dtype=torch.float64))
            result["frames"].append(frames)
            for w in sample["windows"]["spectrogram"]:
                spans.append(_word_pieces(w, row["speech"]["onset"], row["speech"]["offset"], dc))
        batch = collate(samples)
        clips = batch[modalities[0]].shape[1]  # test mode: (B, N, ...) with N windows per clip
        inputs = {m: batch[m].flatten(0, 1) for m in modalities}
        rollout = attention_rollout(model, inputs)
        k = max((len(p) for p in spans), default=0)
        span = torch.tensor([p + [(0.0, 0.0)] * (k - len(p)) for p in spans], dtype=torch.float64) if spans else None
        shares = inside_shares(rollout.maps, torch.stack(boxes) if boxes else None, span, geometry)
        for name, value in shares.items():
            result[name].extend(value.view(-1, clips).mean(dim=1).tolist())
    return result


def _check_frames(window: Mapping[str, Any], geometry: Geometry, frame_size: tuple[int, int], path: str) -> None:
    """The frames were decoded from frames of the written size, resized and cropped as the geometry assumes:
    otherwise the boxes would land elsewhere."""
    sy, sx = geometry.frame_scale
    size = (round(sy * frame_size[0]), round(sx * frame_size[1]))
    crop = (*geometry.crop_offset, *geometry.image_size)
    got = (tuple(window["frame_size"]), tuple(window["size"]), tuple(window["crop"]))
    if got != (tuple(frame_size), size, crop):
        raise InputError(f"{path}: frames of {got[0]} pixels decoded at size {got[1]}, crop {got[2]}; the "
                         f"AV-Digits geometry expects frames of {tuple(frame_size)} at size {size}, crop {crop}")


__all__ = ["ClipGeometry", "Geometry", "inside_shares", "localisation", "read_clip_geometry", "read_metadata"]
