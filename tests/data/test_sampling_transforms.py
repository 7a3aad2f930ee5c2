"""Clip sampling rules (reference D.2) and augmentations (D.3, D.6, D.7) against closed forms and references."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from mbt.data.config import AugmentConfig
from mbt.data.sampling import (middle_offset, num_units, sample_offsets, multi_clip_offsets, train_offsets, window)
from mbt.data.transforms import (GRAY_WEIGHTS, VideoTransform, color_augment, grayscale, hsv_to_rgb, mixup,
                                 rgb_to_hsv, spec_augment)


# ---------------------------------------------------------------------------------------------------- sampling
def test_train_offsets_follow_the_official_rule():
    rng = np.random.default_rng(0)
    offsets = [train_offsets(250, 1000, 32, 2, rng) for _ in range(4000)]
    rgb = np.array([o[0] for o in offsets])
    assert rgb.min() == 0 and rgb.max() == 250 - 31 * 2 - 1  # uniform over [0, len - (T-1)*stride)
    assert len(set(rgb)) == 188
    for o_rgb, o_spec in offsets[:50]:  # the spectrogram starts at the same proportion of its length
        assert o_spec == round(o_rgb / 250 * 1000)
    assert train_offsets(10, 40, 32, 2, rng)[0] == 0  # too short: offset 0 (and the window wraps)


def test_val_and_test_offsets():
    assert middle_offset(250, 32, 2) == (250 - 64) // 2 == 93
    assert middle_offset(1000, 800, 1) == 100
    assert middle_offset(30, 32, 2) == 0
    assert multi_clip_offsets(250, 32, 2, 4) == [0, 62, 124, 186]  # linspace(0, 186, 4) cast to int
    assert multi_clip_offsets(1000, 800, 1, 4) == [0, 66, 133, 200]
    assert multi_clip_offsets(10, 32, 2, 3) == [0, 0, 0]


def test_windows_wrap_around():
    np.testing.assert_array_equal(window(240, 8, 2, 250), [240, 242, 244, 246, 248, 0, 2, 4])
    np.testing.assert_array_equal(window(0, 5, 2, 3), [0, 2, 1, 0, 2])  # shorter than the window: repeats
    np.testing.assert_array_equal(window(0, 4, 1, 1), [0, 0, 0, 0])  # one frame


def test_sample_offsets_pairs_and_absent_modalities():
    assert sample_offsets("val", 250, None, 32, 2, 800, 4, None) == [(93, None)]
    assert sample_offsets("test", None, 1000, 32, 2, 800, 2, None) == [(None, 0), (None, 200)]
    assert sample_offsets("test", 250, 1000, 32, 2, 800, 4, None) == list(zip([0, 62, 124, 186], [0, 66, 133, 200]))
    rng = np.random.default_rng(1)
    (o_rgb, o_spec), = sample_offsets("train", None, 1000, 32, 2, 800, 4, rng)
    assert o_rgb is None and 0 <= o_spec < 201
    assert num_units(10.0, 25) == 250 and num_units(0.01, 25) == 1 and num_units(9.999, 100) == 999


# ---------------------------------------------------------------------------------------------------- colour
def test_hsv_conversions_match_colorsys():
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    hsv = rgb_to_hsv(x)
    for t, i, j in [(0, 0, 0), (1, 3, 6), (0, 4, 2)]:
        ref = colorsys.rgb_to_hsv(*x[t, :, i, j].tolist())
        np.testing.assert_allclose(hsv[t, :, i, j].numpy(), ref, atol=1e-6)
    torch.testing.assert_close(hsv_to_rgb(hsv), x, atol=1e-6, rtol=0)


def test_color_augment_matches_the_tf_formulas_per_pixel():
    """brightness (add), saturation (scale S in HSV), contrast (about the per-frame channel mean), hue (rotate H),
    then clip: recomputed pixel by pixel with colorsys."""
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    b, s, c, h = 0.05, 1.3, 0.7, 0.1
    out = color_augment(x, brightness=b, saturation=s, contrast=c, hue=h)
    ref = np.empty_like(x.numpy())
    y = x.numpy() + b
    for t in range(2):
        sat = np.empty_like(y[t])
        for i in range(4):
            for j in range(4):
                hh, ss, vv = colorsys.rgb_to_hsv(*y[t, :, i, j])
                sat[:, i, j] = colorsys.hsv_to_rgb(hh, min(max(ss * s, 0), 1), vv)
        mean = sat.mean(axis=(1, 2), keepdims=True)
        con = (sat - mean) * c + mean
        for i in range(4):
            for j in range(4):
                hh, ss, vv = colorsys.rgb_to_hsv(*con[:, i, j])
                ref[t, :, i, j] = colorsys.hsv_to_rgb((hh + h) % 1.0, ss, vv)
    np.testing.assert_allclose(out.numpy(), np.clip(ref, 0, 1), atol=1e-5)


def test_grayscale_uses_luma_weights():
    x = torch.rand(3, 3, 4, 4)
    g = grayscale(x)
    expected = sum(w * x[:, k] for k, w in enumerate(GRAY_WEIGHTS))
    for k in range(3):
        torch.testing.assert_close(g[:, k], expected)


# ---------------------------------------------------------------------------------------------------- video
def frames(t=4, h=256, w=340, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_eval_transform_is_a_central_crop_scaled_to_minus_one_one():
    f = frames()
    out = VideoTransform((224, 224), train=False)(f)
    assert out.shape == (3, 4, 224, 224)
    ref = f[:, 16:240, 58:282].astype(np.float32) * 2 / 255 - 1
    np.testing.assert_allclose(out.permute(1, 2, 3, 0).numpy(), ref, atol=1e-6)


def test_train_transform_shapes_range_and_determinism():
    f = frames()
    tf = VideoTransform((224, 224), train=True, augment=AugmentConfig())
    a = tf(f, np.random.default_rng(5))
    b = tf(f, np.random.default_rng(5))
    c = tf(f, np.random.default_rng(6))
    assert a.shape == (3, 4, 224, 224) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_train_crop_and_flip_without_jitter_or_colour_are_exact():
    f = frames(h=230, w=230)
    aug = AugmentConfig(scale_jitter=None, color_augment_prob=0.0, color_drop_prob=0.0)
    tf = VideoTransform((224, 224), train=True, augment=aug)
    seen_flip = seen_plain = False
    for seed in range(20):
        out = tf(f, np.random.default_rng(seed)).permute(1, 2, 3, 0).numpy()
        crops = {(y, x, flip) for y in range(7) for x in range(7) for flip in (False, True)
                 if np.allclose(out, (f[:, y:y + 224, x:x + 224][:, :, ::-1] if flip else
                                      f[:, y:y + 224, x:x + 224]).astype(np.float32) * 2 / 255 - 1, atol=1e-6)}
        assert len(crops) == 1, "every output is a crop of the input, maybe flipped, and nothing else"
        flip = next(iter(crops))[2]
        seen_flip |= flip
        seen_plain |= not flip
    assert seen_flip and seen_plain


def test_colour_drop_gives_gray_frames():
    aug = AugmentConfig(color_augment_prob=0.0, color_drop_prob=1.0)
    out = VideoTransform((224, 224), train=True, augment=aug)(frames(), np.random.default_rng(0))
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(out[1], out[2])


def test_small_frames_are_padded_at_eval():
    out = VideoTransform((32, 32), train=False)(frames(h=20, w=40))
    assert out.shape == (3, 4, 32, 32)


# ---------------------------------------------------------------------------------------------------- audio
def test_spec_augment_masks():
    g = torch.Generator().manual_seed(0)
    spec = torch.randn(500, 1, 100, 128) + 5.0  # no value is 0 before masking
    out = spec_augment(spec, freq_mask_count=1, freq_mask_max_bins=48, time_mask_count=0, time_mask_max_frames=0,
                       generator=g)
    zero_bins = (out == 0).all(dim=2).squeeze(1)  # (500, 128): mel bins masked over all time frames
    widths = zero_bins.sum(1)
    assert ((out == 0) == zero_bins[:, None, None, :]).all(), "frequency masks cover whole bins, nothing else"
    assert widths.min() == 0 and widths.max() == 47  # floor(48 * U(0, 1))
    assert abs(widths.float().mean() - 23.5) < 2
    for row in zero_bins[:50]:  # one contiguous band
        idx = torch.nonzero(row).flatten()
        if len(idx):
            assert idx.max() - idx.min() + 1 == len(idx)
    kept = out != 0
    torch.testing.assert_close(out[kept], spec[kept])
    starts = [int(torch.nonzero(r).min()) for r in zero_bins if r.any()]
    assert min(starts) < 10 and max(starts) > 110  # starts spread over the whole range
    t = spec_augment(spec[:50], 0, 0, time_mask_count=2, time_mask_max_frames=20, generator=g)
    masked_frames = (t == 0).all(dim=3).squeeze(1).sum(1)
    assert masked_frames.max() <= 38 and masked_frames.float().mean() > 5
    assert spec_augment(spec, 0, 0, 0, 0) is spec


def test_mixup_uses_one_lambda_for_both_modalities_and_labels():
    batch = {"rgb": torch.randn(4, 3, 2, 2, 2), "spectrogram": torch.randn(4, 1, 5, 3),
             "label": torch.eye(4), "path": ["a", "b", "c", "d"]}
    mixed, lam = mixup(batch, alpha=0.5, rng=np.random.default_rng(0))
    assert 0 < lam < 1
    for key in ("rgb", "spectrogram", "label"):
        torch.testing.assert_close(mixed[key], lam * batch[key] + (1 - lam) * batch[key].flip(0))
    assert mixed["path"] == batch["path"]
    torch.testing.assert_close(mixed["label"][0], torch.tensor([lam, 0, 0, 1 - lam]))
    lams = [mixup(batch, 0.5, np.random.default_rng(s))[1] for s in range(2000)]
    assert abs(np.mean(lams) - 0.5) < 0.03 and abs(np.var(lams) - 0.125) < 0.01  # Beta(0.5, 0.5)
    assert mixup(batch, 0.0)[1] == 1.0


@pytest.mark.parametrize("factor", [0.3, 0.6, 1.4, 3.0])
def test_saturation_closed_form_equals_the_hsv_route(factor):
    """Values outside [0, 1] too: TF adjusts before clipping (brightness may push pixels out of range)."""
    from mbt.data.transforms import adjust_saturation_

    x = torch.rand(3, 2, 16, 16, generator=torch.Generator().manual_seed(2)) * 1.4 - 0.2
    hsv = rgb_to_hsv(x.transpose(0, 1))
    hsv = torch.stack([hsv[:, 0], (hsv[:, 1] * factor).clamp(0, 1), hsv[:, 2]], dim=1)
    ref = hsv_to_rgb(hsv).transpose(0, 1)
    torch.testing.assert_close(adjust_saturation_(x.clone(), factor), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("delta", [-0.2, -0.05, 0.13, 0.2])
def test_hue_closed_form_equals_the_hsv_route(delta):
    from mbt.data.transforms import adjust_hue_

    x = torch.rand(3, 2, 16, 16, generator=torch.Generator().manual_seed(3)) * 1.4 - 0.2
    x[:, 0, 0, :4] = 0.5  # gray pixels: no hue
    hsv = rgb_to_hsv(x.transpose(0, 1))
    hsv = torch.stack([(hsv[:, 0] + delta) % 1.0, hsv[:, 1], hsv[:, 2]], dim=1)
    ref = hsv_to_rgb(hsv).transpose(0, 1)
    torch.testing.assert_close(adjust_hue_(x.clone(), delta), ref, atol=1e-5, rtol=0)


def test_spectrogram_offset_rounds_at_a_fractional_ratio():
    rng = np.random.default_rng(3)
    pairs = [train_offsets(253, 1011, 32, 2, rng) for _ in range(300)]
    assert all(o_spec == round(o_rgb / 253 * 1011) for o_rgb, o_spec in pairs)
    assert any(o_rgb / 253 * 1011 % 1 > 0.5 for o_rgb, _ in pairs)  # rounding up happens, not only truncation


def test_training_plans_draw_every_choice_as_specified():
    tf = VideoTransform((224, 224), train=True, augment=AugmentConfig(), min_resize=256)
    plans = [tf.plan(360, 640, np.random.default_rng(s)) for s in range(3000)]
    heights = np.array([p.size[0] for p in plans]) / 256
    widths = np.array([p.size[1] for p in plans]) / int(640 * 256 / 360)
    assert heights.min() >= 0.89 and heights.max() <= 1.33 and widths.min() >= 0.89 and widths.max() <= 1.33
    assert abs(np.corrcoef(heights, widths)[0, 1]) < 0.1, "height and width factors are independent"
    tops = np.array([p.box[0] / max(1, p.size[0] - 224) for p in plans])
    lefts = np.array([p.box[1] / max(1, p.size[1] - 224) for p in plans])
    assert tops.min() < 0.05 and tops.max() > 0.95 and lefts.min() < 0.05 and lefts.max() > 0.95
    assert abs(np.mean([p.flip for p in plans]) - 0.5) < 0.04
    colour = np.array([p.color for p in plans if p.color is not None])
    assert abs(len(colour) / len(plans) - 0.8) < 0.03 and abs(np.mean([p.drop for p in plans]) - 0.1) < 0.02
    b, s, c, h = colour.T
    assert abs(b.mean()) < 0.01 and b.max() > 0.9 * 32 / 255 and b.min() < -0.9 * 32 / 255
    assert s.min() >= 0.6 and s.max() <= 1.4 and c.min() >= 0.6 and c.max() <= 1.4
    assert abs(h.mean()) < 0.01 and h.max() > 0.18 and h.min() < -0.18
    eval_plan = VideoTransform((224, 224), train=False, min_resize=256).plan(360, 640)
    assert eval_plan.size == (256, 455) and eval_plan.box == (16, 115, 224, 224) and eval_plan.color is None


def test_modality_dropout_rates_and_never_the_last_stream():
    """Each stream is dropped from the share of clips its probability says, at most one per clip, never a clip's
    last stream, and the same draws for the same generator seed."""
    import numpy as np
    import torch

    from mbt.data.transforms import modality_dropout

    n = 200_000
    lacks_audio = torch.zeros(n, dtype=torch.bool)
    lacks_audio[: n // 4] = True  # a quarter of the clips have no audio
    flags = modality_dropout({"spectrogram": lacks_audio}, {"rgb": 0.3, "spectrogram": 0.2}, n,
                             np.random.default_rng(0))
    both = ~lacks_audio
    rgb, spec = flags["rgb"], flags["spectrogram"]
    assert not (rgb & spec).any()  # never both: every clip keeps a stream
    assert not rgb[lacks_audio].any()  # a clip without audio keeps its frames
    assert torch.equal(spec[lacks_audio], lacks_audio[lacks_audio])  # its own flag stays
    # among clips with both streams: 30% lose the frames, 20% the audio (3-sigma bounds of a binomial)
    m = int(both.sum())
    for got, p in ((rgb[both].float().mean().item(), 0.3), (spec[both].float().mean().item(), 0.2)):
        assert abs(got - p) < 3 * (p * (1 - p) / m) ** 0.5, (got, p)
    again = modality_dropout({"spectrogram": lacks_audio}, {"rgb": 0.3, "spectrogram": 0.2}, n,
                             np.random.default_rng(0))
    assert all(torch.equal(flags[k], again[k]) for k in flags)


def test_mixup_carries_the_missing_flags():
    """A mixed clip lacks a stream when either of its two clips lacks it, unless that would leave it none."""
    import numpy as np
    import torch

    from mbt.data.transforms import mixup

    missing = {"rgb": torch.tensor([True, False, False, False]),
               "spectrogram": torch.tensor([False, False, False, True])}
    batch = {"rgb": torch.zeros(4, 3), "spectrogram": torch.zeros(4, 2), "label": torch.eye(4), "missing": missing}
    out, _ = mixup(batch, 0.5, np.random.default_rng(0))
    # clip 0 mixes with clip 3 (no rgb + no audio: it keeps its own flags), clip 1 with clip 2
    assert out["missing"]["rgb"].tolist() == [True, False, False, False]
    assert out["missing"]["spectrogram"].tolist() == [False, False, False, True]
    missing = {"rgb": torch.tensor([True, False, False, False]), "spectrogram": torch.zeros(4, dtype=torch.bool)}
    out, _ = mixup({**batch, "missing": missing}, 0.5, np.random.default_rng(0))
    assert out["missing"]["rgb"].tolist() == [True, False, False, True]  # clip 3 mixes with the frameless clip 0
