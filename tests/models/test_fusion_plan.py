"""The fusion plan: what each layer runs, for every kind of fusion, and the forward pass and the rollout both follow
it (a model made to walk another plan computes that plan's model)."""

from __future__ import annotations

import pytest
import torch

from mbt import MBT, MBTConfig
from mbt.models.mbt import BOTTLENECK, BlockRun, fusion_plan

SMALL = dict(hidden_size=16, num_layers=4, num_heads=2, mlp_dim=32, num_frames=4, image_size=(16, 16),
             rgb_patch_size=(2, 8, 8), spectrogram_shape=(32, 16), spectrogram_patch_size=(8, 8), num_classes=3,
             classifier="gap", stochastic_droplayer_rate=0.0)
BOTH = ["spectrogram", "rgb"]


def kinds(config: MBTConfig, training: bool, present=BOTH) -> list[str]:
    return [p.kind for p in fusion_plan(config, present, training)]


def test_each_fusion_kind_layer_by_layer():
    bottleneck = MBTConfig(**SMALL, fusion_layer=2, use_bottleneck=True)
    assert kinds(bottleneck, True) == ["unimodal"] * 2 + ["bottleneck"] * 2
    layer2 = fusion_plan(bottleneck, BOTH, True)[2]
    assert layer2.runs == (BlockRun("spectrogram", ("spectrogram", BOTTLENECK)), BlockRun("rgb", ("rgb", BOTTLENECK)))
    vanilla = MBTConfig(**SMALL, fusion_layer=1, use_bottleneck=False)
    assert kinds(vanilla, False) == ["unimodal"] + ["vanilla_separate"] * 3
    # Each modality attends over the others in the fixed order (rgb, spectrogram), whatever modality_fusion says.
    assert fusion_plan(vanilla, BOTH, False)[1].runs == (BlockRun("spectrogram", ("spectrogram",), ("rgb",)),
                                                         BlockRun("rgb", ("rgb",), ("spectrogram",)))
    shared = MBTConfig(**SMALL, fusion_layer=0, use_bottleneck=False, share_encoder=True)
    assert fusion_plan(shared, BOTH, False)[0].runs == (BlockRun("shared", ("spectrogram", "rgb")),)
    assert all(r.stream == "shared" for p in fusion_plan(MBTConfig(**SMALL, fusion_layer=2, share_encoder=True),
                                                         BOTH, True) for r in p.runs)
    late = MBTConfig(**SMALL, fusion_layer=4)
    assert kinds(late, True) == ["unimodal"] * 4 and not late.uses_bottleneck(True)
    # Scenic: test_with_bottlenecks=False switches off every exchange in eval mode only.
    off = MBTConfig(**SMALL, fusion_layer=0, test_with_bottlenecks=False)
    assert kinds(off, False) == ["unimodal"] * 4 and kinds(off, True) == ["bottleneck"] * 4
    assert off.uses_bottleneck(True) and not off.uses_bottleneck(False)
    single = MBTConfig(**SMALL, modality_fusion=("rgb",), fusion_layer=0)
    assert kinds(single, True, ["rgb"]) == ["unimodal"] * 4 and not single.uses_bottleneck(True)
    # A modality missing at inference: the plan runs on the one that is there.
    assert fusion_plan(bottleneck, ["rgb"], False)[3].runs == (BlockRun("rgb", ("rgb", BOTTLENECK)),)


@pytest.mark.parametrize("target", [dict(fusion_layer=4), dict(fusion_layer=1), dict(fusion_layer=3)])
def test_forward_walks_the_plan(monkeypatch, target):
    """A bottleneck@2 model made to walk the plan of another fusion layer gives exactly that model's output (same
    weights), so forward has no schedule of its own."""
    torch.manual_seed(0)
    model = MBT(MBTConfig(**SMALL, fusion_layer=2)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    other = MBT(MBTConfig(**SMALL, **target)).eval()
    other.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(1)
    x = {"rgb": torch.randn(2, 3, 4, 16, 16, generator=g), "spectrogram": torch.randn(2, 1, 32, 16, generator=g)}
    want = other(x).logits
    assert not torch.allclose(model(x).logits, want, atol=1e-4)  # the two models do differ
    monkeypatch.setattr(model, "fusion_plan", lambda present: fusion_plan(other.config, present, False))
    monkeypatch.setattr(model, "uses_bottleneck", other.uses_bottleneck)
    torch.testing.assert_close(model(x).logits, want, rtol=0, atol=0)
