"""Compute: vanilla fusion with separate weights skips the official code's wasted work (same outputs, <= 0.65x
the FLOPs), and FlopCounterMode's count equals a closed-form multiply-add count for every schedule.

FLOPs are counted on the meta device: there scaled_dot_product_attention decomposes into counted matmuls, while
the fused CPU kernel is invisible to FlopCounterMode.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mbt import MBT, MBTConfig
from mbt.weights import scenic_to_state_dict
from tests.conftest import randomize_, random_inputs


def count_flops(config: MBTConfig, scenic_schedule: bool = False, present=None) -> int:
    with torch.device("meta"):
        model = MBT(config).eval()
        model.scenic_vanilla_schedule = scenic_schedule
        inputs = {m: torch.empty(1, *config.input_shape(m)) for m in (present or config.modality_fusion)}
        with FlopCounterMode(display=False) as counter:
            model(inputs)
    return counter.get_total_flops()


def closed_form_macs(config: MBTConfig, scenic_schedule: bool = False) -> int:
    """Multiply-adds of one clip: patch embeddings, attention projections, QK^T and AV, MLP, pre_logits, head.
    (Norms, softmax, GELU, biases and pooling are not multiply-adds.)"""
    D, F, L = config.hidden_size, config.mlp_dim, config.num_layers
    mods = config.modality_fusion
    n = {m: config.num_tokens(m) for m in mods}
    nb = config.n_bottleneck_tokens if config.use_bottleneck else 0

    def block(nq: int, nkv: int) -> int:  # nq query tokens over nkv key/value tokens
        return nq * D * D * 2 + nkv * D * D * 2 + 2 * nq * nkv * D + nq * D * F * 2  # q+out, k+v, attn, mlp

    macs = 0
    for m in mods:
        patch = math.prod(config.rgb_patch_size if m == "rgb" else config.spectrogram_patch_size)
        channels = config.rgb_channels if m == "rgb" else config.spectrogram_channels
        macs += math.prod(config.token_grid(m)) * D * channels * patch
    fusing = len(mods) > 1
    for layer in range(L):
        if not fusing or layer < config.fusion_layer:
            macs += sum(block(n[m], n[m]) for m in mods)
        elif config.use_bottleneck:
            macs += sum(block(n[m] + nb, n[m] + nb) for m in mods)
        elif config.share_encoder:
            total = sum(n.values())
            macs += block(total, total)
        else:
            total = sum(n.values())
            macs += sum(block(total if scenic_schedule else n[m], total) for m in mods)
    heads = len(mods) if config.classifier == "token" else 1
    r = config.representation_size
    macs += heads * ((D * r if r else 0) + (r or D) * config.num_classes)
    return macs


B16 = MBTConfig.from_preset("mbt-b16x2")
SCHEDULES = {
    "bottleneck_l8": B16,
    "late": B16.replace(use_bottleneck=False, fusion_layer=12),
    "vanilla_early": B16.replace(use_bottleneck=False, fusion_layer=0),
    "vanilla_mid": B16.replace(use_bottleneck=False, fusion_layer=6),
    "vanilla_shared_mid": B16.replace(use_bottleneck=False, fusion_layer=6, share_encoder=True),
    "bottleneck_early_gap_repr": B16.replace(fusion_layer=0, classifier="gap", representation_size=256),
    "rgb_only": B16.replace(modality_fusion=("rgb",)),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_flop_counter_equals_closed_form(name):
    config = SCHEDULES[name]
    assert count_flops(config) == 2 * closed_form_macs(config)


def test_reference_gmacs_for_b16x2():
    """Reference G.3 (analytic, 32 frames): bottleneck 489-490 GMACs at every fusion layer; rgb-only 451.5."""
    assert count_flops(B16) / 2e9 == pytest.approx(489.1, abs=0.5)
    assert count_flops(B16.replace(modality_fusion=("rgb",))) / 2e9 == pytest.approx(451.5, abs=0.5)


@pytest.mark.parametrize("config", [
    MBTConfig.from_preset("mbt-b16x2", use_bottleneck=False, fusion_layer=0),
    MBTConfig(use_bottleneck=False, fusion_layer=0, hidden_size=64, num_heads=4, num_layers=4, mlp_dim=128,
              num_classes=7, rgb_patch_size=(2, 8, 8), num_frames=8, image_size=(32, 32), rgb_channels=3,
              spectrogram_patch_size=(8, 8), spectrogram_shape=(100, 32)),  # fixture c's geometry
], ids=["b16x2", "fixture_c"])
def test_vanilla_early_fusion_costs_at_most_065_of_the_official_schedule(config):
    ours, official = count_flops(config), count_flops(config, scenic_schedule=True)
    assert official == 2 * closed_form_macs(config, scenic_schedule=True)
    assert ours / official <= 0.65, ours / official


@pytest.mark.parametrize("changes", [dict(fusion_layer=0), dict(fusion_layer=2),
                                     dict(fusion_layer=1, modality_fusion=("rgb", "spectrogram"))])
def test_efficient_vanilla_schedule_gives_the_official_result(changes):
    config = MBTConfig(use_bottleneck=False, hidden_size=32, num_heads=4, num_layers=4, mlp_dim=64, num_classes=5,
                       rgb_patch_size=(2, 8, 8), num_frames=4, image_size=(16, 16),
                       spectrogram_patch_size=(8, 8), spectrogram_shape=(32, 16), **changes)
    model = randomize_(MBT(config)).eval()
    x = random_inputs(config)
    with torch.no_grad():
        ours = model(x)
        model.scenic_vanilla_schedule = True
        official = model(x)
    torch.testing.assert_close(ours.tokens, official.tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.logits, official.logits, rtol=1e-5, atol=1e-5)


def test_both_vanilla_schedules_match_fixture_c(load_fixture):
    fx = load_fixture("c_vanilla_early_separate")
    config = MBTConfig.from_scenic(fx.kwargs, fx.meta["input_shapes"])
    model = MBT(config).eval()
    model.load_state_dict(scenic_to_state_dict(fx.params, config))
    for scenic_schedule in (False, True):
        model.scenic_vanilla_schedule = scenic_schedule
        with torch.no_grad():
            out = model(fx.inputs())
        assert (out.logits - torch.from_numpy(fx["output/logits"])).abs().max() <= 1e-5
