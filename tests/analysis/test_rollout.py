"""Attention rollout against hand-computed cases, and the recording hook leaves outputs unchanged."""

from __future__ import annotations

import pytest
import torch

from mbt.analysis.rollout import attention_rollout, record_attention

from .conftest import tiny_model


def uniform_attention(model) -> None:
    """Zero query and key projections: every attention row is uniform over its keys (fixed, input-independent)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("attn.qkv.weight") or name.endswith("attn.qkv.bias"):
                d = p.shape[0] // 3
                p[: 2 * d] = 0.0


def inputs(model, batch: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.rand(batch, *model.config.input_shape(m), generator=g) * 2 - 1
            for m in model.config.modality_fusion}


def test_bottleneck_rollout_matches_hand_computation():
    """rgb 8 tokens (2 frames of 16x32 in 2x8x8 tubelets), spectrogram 4 tokens, 2 bottleneck tokens, 2 layers,
    fusion from layer 1, gap head, uniform attention. By hand:
    layer 0 mixes tokens within each modality only (mass stays in the modality);
    layer 1, rgb rows over [8 rgb ; 2 bottleneck] (K = 10): 0.5 on itself + 0.05 on each key -> rgb 0.9, bn 0.1;
    spectrogram rows over [4 spec ; 2 bn] (K = 6): 0.5 + 1/12 each -> spec 5/6, bn 1/6.
    The gap output is the mean of the 12 token rows: rgb 8 * 0.9 / 12 = 0.6, spec 4 * (5/6) / 12 = 5/18,
    bottleneck (8 * 0.1 + 4 / 6) / 12 = 11/90; by symmetry uniform within each group."""
    model = tiny_model(num_frames=2, image_size=(16, 32), spectrogram_shape=(32, 32), n_bottlenecks=2, fusion_layer=1,
                       num_layers=2)
    assert model.config.num_tokens("rgb") == 8 and model.config.num_tokens("spectrogram") == 4
    uniform_attention(model)
    r = attention_rollout(model, inputs(model))
    torch.testing.assert_close(r.maps["rgb"], torch.full((2, 1, 2, 4), 0.6 / 8), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.maps["spectrogram"], torch.full((2, 2, 2), (5 / 18) / 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.bottleneck, torch.full((2, 2), (11 / 90) / 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.relevance.sum(-1), torch.ones(2))


def test_token_head_late_fusion_rollout_matches_hand_computation():
    """Late fusion (fusion_layer = num_layers), token head, 1 layer, uniform attention: each CLS row is 0.5 on
    itself + 0.5 / N_m on each of its modality's N_m tokens; the logits average the two CLS, so each patch gets
    0.5 * (0.5 / N_m) and each CLS 0.5 * (0.5 + 0.5 / N_m). rgb N = 9 (8 patches + CLS), spectrogram N = 5."""
    model = tiny_model(num_frames=2, image_size=(16, 32), spectrogram_shape=(32, 32), num_layers=1, fusion_layer=1,
                       classifier="token")
    uniform_attention(model)
    r = attention_rollout(model, inputs(model))
    torch.testing.assert_close(r.maps["rgb"], torch.full((2, 1, 2, 4), 0.25 / 9), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.maps["spectrogram"], torch.full((2, 2, 2), 0.25 / 5), atol=1e-6, rtol=0)
    cls_rgb = r.relevance[:, r.spans["rgb"].start]
    torch.testing.assert_close(cls_rgb, torch.full((2,), 0.5 * (0.5 + 0.5 / 9)), atol=1e-6, rtol=0)
    assert r.bottleneck is None


def test_vanilla_separate_rollout_matches_hand_computation():
    """Vanilla cross-attention with separate weights from layer 0, 1 layer, gap, uniform attention: rgb rows attend
    over [4 spec ; 8 rgb] (K = 12): own modality 0.5 + 8/24, other 4/24; spectrogram rows over [8 rgb ; 4 spec]:
    own 0.5 + 4/24, other 8/24. Mean over 12 rows: rgb (8 * 5/6 + 4 * 1/3) / 12 = 2/3, spec 1/3."""
    model = tiny_model(num_frames=2, image_size=(16, 32), spectrogram_shape=(32, 32), num_layers=1, fusion_layer=0,
                       use_bottleneck=False)
    uniform_attention(model)
    r = attention_rollout(model, inputs(model))
    torch.testing.assert_close(r.maps["rgb"].sum((1, 2, 3)), torch.full((2,), 2 / 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.maps["spectrogram"], torch.full((2, 2, 2), (1 / 3) / 4), atol=1e-6, rtol=0)


@pytest.mark.parametrize("changes", [
    dict(),  # bottleneck mid fusion, gap
    dict(classifier="token", fusion_layer=0),
    dict(use_bottleneck=False, fusion_layer=1),
    dict(use_bottleneck=False, share_encoder=True, fusion_layer=0),
    dict(modality_fusion=("rgb",)),
])
def test_rollout_of_every_schedule_is_a_distribution_and_leaves_outputs_unchanged(changes):
    """Trained-like (random) attention: relevance is a probability vector over the input tokens, every recorded
    attention call is consumed, and recording does not change the logits (bit for bit)."""
    model = tiny_model(**changes)
    x = inputs(model)
    with torch.no_grad():
        plain = model(x).logits
    r = attention_rollout(model, x)
    assert torch.equal(r.logits, plain)
    torch.testing.assert_close(r.relevance.sum(-1), torch.ones(2))
    assert (r.relevance >= 0).all()
    for m in model.config.modality_fusion:
        assert tuple(r.maps[m].shape[1:]) == model.config.token_grid(m)
    assert all(a.record is None for a in model.modules() if hasattr(a, "record"))


def test_rollout_with_a_modality_missing():
    model = tiny_model()
    x = inputs(model)
    r = attention_rollout(model, {"rgb": x["rgb"]})
    assert set(r.maps) == {"rgb"}
    torch.testing.assert_close(r.relevance.sum(-1), torch.ones(2))


def test_recorded_weights_are_the_softmax_of_scaled_scores():
    """The recorded weights of the first block equal softmax(q k^T / sqrt(d_head)) computed by hand."""
    model = tiny_model(num_layers=1, fusion_layer=1, modality_fusion=("rgb",))
    x = inputs(model)["rgb"]
    with torch.no_grad(), record_attention(model) as store:
        model({"rgb": x})
        block = model.block("rgb", 0)
        tokens = block.norm1(model.tokenizers["rgb"](x))
        d = tokens.shape[-1]
        q, k, _ = block.attn.qkv(tokens).split(d, dim=-1)
        H = model.config.num_heads
        q = q.view(2, -1, H, d // H).transpose(1, 2)
        k = k.view(2, -1, H, d // H).transpose(1, 2)
        want = torch.softmax(q @ k.transpose(-1, -2) / (d // H) ** 0.5, dim=-1)
    assert len(store) == 1
    torch.testing.assert_close(store[0], want, atol=1e-6, rtol=1e-5)
