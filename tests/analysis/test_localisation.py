"""Attention localisation on AV-Digits: `inside_shares` against hand-computed cases, and `localisation` end to end on
a small generated dataset (the frames and audio window it scores are the ones the model was given)."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from mbt import MBTConfig
from mbt.analysis import localisation as loc
from mbt.analysis.localisation import Geometry, inside_shares, localisation
from mbt.avdigits.demo import TINY_MODEL
from mbt.avdigits.generator import AVDigitsConfig, generate
from mbt.data import DataConfig
from mbt.data.audio import FrontEndConfig
from mbt.errors import InputError, MissingFileError
from mbt.models.mbt import MBT

# The logmel front end at 16 kHz: 25 ms analysis windows (400 samples) every 10 ms (160 samples). Frame k of a window
# stands for the 10 ms centred on its analysis window: [12.5 - 5 + 10 k, + 10) ms from the window's first sample.
HOP, FIRST = 0.010, 0.0075


def simple_geometry(**changes) -> Geometry:
    """64x64 frames in 16x16 patches, 2 tubelets of 2 frames, no resize or crop; 8 spectrogram frames of 0.1 s in
    patches of 4, frame k standing for [0.1 k, 0.1 (k + 1)) s."""
    g = dict(image_size=(64, 64), rgb_patch=(16, 16), rgb_slots=((0, 1), (2, 3)), frame_scale=(1.0, 1.0),
             crop_offset=(0, 0), spec_frames=8, spec_patch=4, spec_hop=0.1, spec_centre=0.05)
    return Geometry(**{**g, **changes})


def one_hot_rgb(slot: int, i: int, j: int) -> torch.Tensor:
    m = torch.zeros(1, 2, 4, 4)
    m[0, slot, i, j] = 1.0
    return m


def boxes(*per_frame) -> torch.Tensor:
    """(1, 4, 4): one [x0, y0, x1, y1] per input frame (one box given: the same in all four)."""
    b = list(per_frame) * 4 if len(per_frame) == 1 else list(per_frame)
    return torch.tensor([b], dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("box, patch, want", [
    ([16, 16, 48, 48], (1, 1), 1.0),  # patch [16, 32)^2 inside the box in both frames
    ([16, 16, 48, 48], (3, 3), 0.0),  # patch [48, 64)^2 outside
    ([24, 16, 56, 48], (1, 1), 0.5),  # x: patch [16, 32) against box [24, 56): half; y: all
    ([20, 28, 52, 60], (1, 1), 0.75 * 0.25),  # x [20, 32) of [16, 32): 3/4; y [28, 32): 1/4
])
def test_rgb_one_hot_tubelet(box, patch, want):
    g = simple_geometry()
    got = inside_shares({"rgb": one_hot_rgb(0, *patch)}, boxes(box), None, g)
    assert float(got["rgb"][0]) == pytest.approx(want, abs=1e-12)


def test_rgb_uses_each_frames_own_box():
    """Tubelet 1 covers frames 2 and 3: its patch (1, 1) is inside frame 2's box and outside frame 3's -> 0.5; the
    boxes of frames 0 and 1 (tubelet 0) play no part."""
    inside, outside = [16, 16, 48, 48], [40, 40, 64, 64]
    b = boxes(outside, outside, inside, outside)
    got = inside_shares({"rgb": one_hot_rgb(1, 1, 1)}, b, None, simple_geometry())
    assert float(got["rgb"][0]) == pytest.approx(0.5, abs=1e-12)
    got = inside_shares({"rgb": one_hot_rgb(0, 1, 1)}, b, None, simple_geometry())
    assert float(got["rgb"][0]) == 0.0


def test_rgb_uniform_map_scores_chance_and_scale_does_not_matter():
    """A uniform map (at any scale) scores the chance share: the box's area fraction averaged over the frames.
    Frames: 32x32 (1/4), 16x16 (1/16), half outside the frame 32x32 (1/8: only 32x16 is in the frame), 64x64 (1)."""
    b = boxes([16, 16, 48, 48], [0, 0, 16, 16], [48, 0, 80, 32], [0, 0, 64, 64])
    want = (1 / 4 + 1 / 16 + 1 / 8 + 1) / 4
    got = inside_shares({"rgb": torch.full((1, 2, 4, 4), 7.0)}, b, None, simple_geometry())
    assert float(got["rgb_chance"][0]) == pytest.approx(want, abs=1e-12)
    assert float(got["rgb"][0]) == pytest.approx(want, abs=1e-12)


def test_rgb_resize_and_crop_map_written_pixels_to_model_pixels():
    """Written 80x80 frames shown to the model resized by 1.25 and cropped at (8, 8): the written box [16, 32) is
    model pixels [12, 32): patch (1, 1) = [16, 32)^2 is inside, patch (0, 0) = [0, 16)^2 has [12, 16)^2 = 1/16."""
    g = simple_geometry(frame_scale=(1.25, 1.25), crop_offset=(8, 8))
    b = boxes([16, 16, 32, 32])
    assert float(inside_shares({"rgb": one_hot_rgb(0, 1, 1)}, b, None, g)["rgb"][0]) == pytest.approx(1.0)
    assert float(inside_shares({"rgb": one_hot_rgb(0, 0, 0)}, b, None, g)["rgb"][0]) == pytest.approx(1 / 16)
    # chance: the box is 20x20 model pixels of 64x64
    assert float(inside_shares({"rgb": one_hot_rgb(0, 0, 0)}, b, None, g)["rgb_chance"][0]) == pytest.approx(
        400 / 4096)


@pytest.mark.parametrize("span, patch, want", [
    ([0.0, 0.4], 0, 1.0),  # patch 0 = frames 0-3 = [0, 0.4) s
    ([0.4, 0.8], 0, 0.0),
    ([0.4, 0.8], 1, 1.0),
    ([0.2, 0.6], 0, 0.5),  # frames 2, 3 of patch 0
    ([0.05, 0.25], 0, 0.5),  # frame 0 half, frame 1 all, frame 2 half: (0.5 + 1 + 0.5) / 4
    ([0.35, 0.43], 1, 0.3 / 4),  # patch 1: frame 4 [0.4, 0.5) has 0.03 of 0.1
])
def test_spectrogram_one_hot_patch(span, patch, want):
    m = torch.zeros(1, 2, 3)
    m[0, patch] = torch.tensor([0.2, 0.5, 0.3])  # spread over the mel axis, which is ignored
    got = inside_shares({"spectrogram": m}, None, torch.tensor([span], dtype=torch.float64),
                         simple_geometry())
    assert float(got["spectrogram"][0]) == pytest.approx(want, abs=1e-12)


def test_spectrogram_uniform_map_scores_chance():
    """The span's fraction of the window (0.8 s): [0.1, 0.3) -> 1/4; a span running past the window counts only
    inside; several pieces (a window wrapping around the clip end) add up."""
    g = simple_geometry()
    spans = torch.tensor([[[0.1, 0.3], [0.0, 0.0]], [[0.7, 1.5], [0.0, 0.0]], [[-0.3, 0.1], [0.6, 0.7]]],
                         dtype=torch.float64)
    got = inside_shares({"spectrogram": torch.ones(3, 2, 3)}, None, spans, g)
    want = torch.tensor([0.25, 0.125, 0.25], dtype=torch.float64)
    torch.testing.assert_close(got["spectrogram_chance"], want)
    torch.testing.assert_close(got["spectrogram"], want)


def test_frame_timing_follows_the_geometry():
    """With the logmel front end frame 0 stands for [7.5, 17.5) ms: a span [0, 12.5 ms) covers half of it."""
    dc = DataConfig.for_model(MBTConfig(**TINY_MODEL), front_end=FrontEndConfig.preset("logmel", num_mel_bins=64))
    g = Geometry.of(MBTConfig(**TINY_MODEL), dc, (64, 64))
    m = torch.zeros(1, 12, 4)
    m[0, 0, 0] = 1.0
    got = inside_shares({"spectrogram": m}, None, torch.tensor([[0.0, 0.0125]], dtype=torch.float64), g)
    assert float(got["spectrogram"][0]) == pytest.approx(0.5 / 16, abs=1e-9)


def test_wrong_shapes_and_missing_truth_are_refused():
    g = simple_geometry()
    with pytest.raises(InputError, match="rgb map is"):
        inside_shares({"rgb": torch.ones(1, 2, 4, 3)}, boxes([0, 0, 8, 8]), None, g)
    with pytest.raises(InputError, match="digit boxes"):
        inside_shares({"rgb": torch.ones(1, 2, 4, 4)}, None, None, g)
    with pytest.raises(InputError, match="span"):
        inside_shares({"spectrogram": torch.ones(1, 2, 3)}, None, None, g)


def test_geometry_from_the_configs():
    """The demo model (8 frames of 64 px, 2x16x16 tubelets, 192 x 64 log-mel in 16x16 patches) on 64 px frames
    resized to 80 and centre-cropped; and temporal sampling, one frame per slot."""
    cfg = MBTConfig(**TINY_MODEL)
    dc = DataConfig.for_model(cfg, min_resize=80, front_end=FrontEndConfig.preset("logmel", num_mel_bins=64))
    g = Geometry.of(cfg, dc, (64, 64))
    assert g.rgb_slots == ((0, 1), (2, 3), (4, 5), (6, 7)) and g.rgb_patch == (16, 16) and g.image_size == (64, 64)
    assert g.frame_scale == (1.25, 1.25) and g.crop_offset == (8, 8)
    assert g.spec_frames == 192 and g.spec_patch == 16
    assert g.spec_hop == pytest.approx(0.01) and g.spec_centre == pytest.approx(0.0125)
    ts = cfg.replace(temporal_encoding="temporal_sampling", rgb_patch_size=(1, 16, 16), n_sampled_frames=3)
    assert Geometry.of(ts, dc, (64, 64)).rgb_slots == tuple((i,) for i in ts.rgb_frame_indices)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def avdigits(tmp_path_factory):
    root = tmp_path_factory.mktemp("avd-loc")
    generate(AVDigitsConfig(train_clips=0, test_clips=4, seed=3), root, workers=1, progress=False)
    return root


def metadata(root) -> list[dict]:
    return [json.loads(l) for l in (root / "metadata" / "test.jsonl").read_text().splitlines()]


def model_and_data(num_test_clips: int = 1, **changes) -> tuple[MBT, DataConfig]:
    """The demo's tiny model (random weights) with `changes`, and a data config as the demo's (8 frames at 4 fps,
    64 px, the whole clip in one window); `fps` and `min_resize` in `changes` go to the data config."""
    data = {k: changes.pop(k) for k in ("fps", "min_resize") if k in changes}
    torch.manual_seed(0)
    cfg = MBTConfig(**{**TINY_MODEL, "num_classes": 10, **changes})
    dc = DataConfig.for_model(cfg, **{"fps": 4.0, "stride": 1, "min_resize": 64, **data},
                              num_test_clips=num_test_clips,
                              front_end=FrontEndConfig.preset("logmel", num_mel_bins=64))
    return MBT(cfg).eval(), dc


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def test_demo_model_shares_and_chance(avdigits):
    """A random demo-sized model through the real rollout: one value per clip in [0, 1]; the chance values are the
    box's area fraction (the box lies inside the 64 px frame, so side^2 / 64^2, averaged over the 8 frames) and the
    word's share of the 192 frames of 10 ms starting at 7.5 ms."""
    model, dc = model_and_data()
    r = localisation(model, dc, avdigits, limit=3, batch_size=2)
    rows = metadata(avdigits)[:3]
    assert r["files"] == [row["file"] for row in rows]
    assert r["frames"] == [[list(range(8))]] * 3  # 8 frames at 4 fps from 0 s: the written frames 0..7
    for m in ("rgb", "spectrogram", "rgb_chance", "spectrogram_chance"):
        assert len(r[m]) == 3 and all(0.0 <= v <= 1.0 for v in r[m]), (m, r[m])
    for row, rgb, spec in zip(rows, r["rgb_chance"], r["spectrogram_chance"]):
        area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in row["digit_boxes"]) / 8 / 64**2
        assert rgb == pytest.approx(area, abs=1e-9)
        on, off = row["speech"]["onset"], row["speech"]["offset"]
        assert spec == pytest.approx(overlap(on, off, FIRST, FIRST + 192 * HOP) / (192 * HOP), abs=1e-9)


def rgb_share(heat: torch.Tensor, frame_boxes: list, scale: float, shift: float, patch: int, slots) -> float:
    """The rgb share computed pixel-interval by pixel-interval: frame_boxes are written [x0, y0, x1, y1] per input
    frame; model pixel = written pixel * scale - shift."""
    heat = heat.double()
    t, h, w = heat.shape
    total, share = float(heat.sum()), 0.0
    for s in range(t):
        for i in range(h):
            for j in range(w):
                f = 0.0
                for k in slots[s]:
                    x0, y0, x1, y1 = (v * scale - shift for v in frame_boxes[k])
                    f += (overlap(y0, y1, i * patch, (i + 1) * patch) * overlap(x0, x1, j * patch, (j + 1) * patch)
                          / patch**2)
                share += float(heat[s, i, j]) / total * f / len(slots[s])
    return share


def spec_share(heat: torch.Tensor, onset: float, offset: float, start: float, per_patch: int) -> float:
    """The spectrogram share from the frame intervals in clip seconds: frame k = [start + 7.5 ms + 10 k ms, + 10 ms)."""
    col = heat.double().sum(-1)
    total, share = float(col.sum()), 0.0
    for p in range(len(col)):
        f = sum(overlap(onset, offset, start + FIRST + k * HOP, start + FIRST + (k + 1) * HOP) / HOP
                for k in range(p * per_patch, (p + 1) * per_patch)) / per_patch
        share += float(col[p]) / total * f
    return share


@pytest.fixture()
def fake_rollout(monkeypatch):
    """Replaces the rollout by random maps of the model's grids (kept in `made`, in call order)."""
    made: list[dict[str, torch.Tensor]] = []
    g = torch.Generator().manual_seed(5)

    def rollout(model, inputs):
        batch = next(iter(inputs.values())).shape[0]
        maps = {m: torch.rand(batch, *model.config.token_grid(m), generator=g) for m in inputs}
        made.append(maps)
        return SimpleNamespace(maps=maps)

    monkeypatch.setattr(loc, "attention_rollout", rollout)
    return made


def test_frames_crop_and_window_start_follow_the_pipeline(avdigits, fake_rollout):
    """4 frames sampled at 2 fps (the written frames 0, 2, 4, 6), frames resized 64 -> 80 and centre-cropped at 8,
    two test windows per clip (the spectrogram windows start at frames 0 and 8 of 200, i.e. at 0 and 80 ms): each
    share equals the one computed here from the metadata, for random maps, averaged over the two windows."""
    model, dc = model_and_data(num_test_clips=2, num_frames=4, fps=2.0, min_resize=80)
    r = localisation(model, dc, avdigits, batch_size=3)
    maps = {m: torch.cat([f[m] for f in fake_rollout]) for m in ("rgb", "spectrogram")}
    assert r["frames"] == [[[0, 2, 4, 6]] * 2] * 4
    slots = ((0, 1), (2, 3))
    for c, row in enumerate(metadata(avdigits)):
        frame_boxes = [row["digit_boxes"][i] for i in (0, 2, 4, 6)]
        on, off = row["speech"]["onset"], row["speech"]["offset"]
        rgb = [rgb_share(maps["rgb"][2 * c + w], frame_boxes, 1.25, 8.0, 16, slots) for w in range(2)]
        spec = [spec_share(maps["spectrogram"][2 * c + w], on, off, start, 16) for w, start in enumerate((0, 0.08))]
        assert r["rgb"][c] == pytest.approx(sum(rgb) / 2, abs=1e-9)
        assert r["spectrogram"][c] == pytest.approx(sum(spec) / 2, abs=1e-9)
        # a uniform map: the box's area inside the crop, and the word's share of [80 ms + 7.5 ms, + 1.92 s)
        area = sum(overlap(x0 * 1.25 - 8, x1 * 1.25 - 8, 0, 64) * overlap(y0 * 1.25 - 8, y1 * 1.25 - 8, 0, 64)
                   for x0, y0, x1, y1 in frame_boxes) / 4 / 64**2
        assert r["rgb_chance"][c] == pytest.approx(area, abs=1e-9)
        chance = [overlap(on, off, s + FIRST, s + FIRST + 1.92) / 1.92 for s in (0.0, 0.08)]
        assert r["spectrogram_chance"][c] == pytest.approx(sum(chance) / 2, abs=1e-9)


def test_map_on_the_sampled_boxes_scores_one(avdigits, monkeypatch):
    """Relevance put only on the patches that lie inside the digit's box in the frames the pipeline samples (1-frame
    tubelets of 8x8 at 2 fps: written frames 0, 2, 4, 6) and on the spectrogram patches inside the word scores 1.
    The same map scored against the boxes of frames 0..3 would not: the test sees a wrong frame mapping."""
    model, dc = model_and_data(num_frames=4, fps=2.0, rgb_patch_size=(1, 8, 8), spectrogram_patch_size=(8, 16))
    rows = {row["file"]: row for row in metadata(avdigits)}
    files = iter(rows)
    wrong = []

    def inside(box, i, j):  # patch (i, j) of 8x8 pixels entirely inside the box
        x0, y0, x1, y1 = box
        return x0 <= 8 * j and 8 * (j + 1) <= x1 and y0 <= 8 * i and 8 * (i + 1) <= y1

    def rollout(model, inputs):
        rgb, spec = torch.zeros(len(inputs["rgb"]), 4, 8, 8), torch.zeros(len(inputs["rgb"]), 24, 4)
        for b in range(len(rgb)):
            row = rows[next(files)]
            for s, frame in enumerate((0, 2, 4, 6)):
                for i in range(8):
                    for j in range(8):
                        rgb[b, s, i, j] = float(inside(row["digit_boxes"][frame], i, j))
            on, off = row["speech"]["onset"], row["speech"]["offset"]
            for p in range(24):  # patch p: frames 8p .. 8p + 7 = [7.5 ms + 80 p ms, + 80 ms)
                spec[b, p] = float(on <= FIRST + 8 * p * HOP and FIRST + 8 * (p + 1) * HOP <= off)
            assert rgb[b].sum((1, 2)).min() > 0 and spec[b].sum() > 0, "no patch inside: choose other clips"
            wrong.append(sum(float(rgb[b, s, i, j]) for s in range(4) for i in range(8) for j in range(8)
                             if not inside(row["digit_boxes"][s], i, j)))
        return SimpleNamespace(maps={"rgb": rgb, "spectrogram": spec})

    monkeypatch.setattr(loc, "attention_rollout", rollout)
    r = localisation(model, dc, avdigits, batch_size=2)
    assert r["rgb"] == pytest.approx([1.0] * 4, abs=1e-9)
    assert r["spectrogram"] == pytest.approx([1.0] * 4, abs=1e-9)
    assert max(wrong) > 0  # with frames 0..3 some of that relevance would fall outside


def test_missing_ground_truth_is_refused_naming_the_file(avdigits, tmp_path):
    model, dc = model_and_data()
    copy = tmp_path / "avd"
    shutil.copytree(avdigits, copy)
    lines = (copy / "metadata" / "test.jsonl").read_text().splitlines()
    (copy / "metadata" / "test.jsonl").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(InputError, match="test_00000.mp4: no ground truth for this clip in .*test.jsonl"):
        localisation(model, dc, copy, limit=1)
    (copy / "metadata" / "test.jsonl").unlink()
    with pytest.raises(MissingFileError, match=r"metadata/test.jsonl: no such file"):
        localisation(model, dc, copy, limit=1)
    (copy / "avdigits.json").unlink()
    with pytest.raises(MissingFileError, match=r"avdigits.json: no such file"):
        localisation(model, dc, copy, limit=1)
