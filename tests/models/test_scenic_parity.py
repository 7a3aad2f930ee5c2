"""The PyTorch MBT equals the official Scenic (Flax) MBT on every fixture in ../shared/fixtures/scenic_mbt.

Each fixture holds the parameters, inputs and outputs of the official model for one configuration. The model is
built with `MBTConfig.from_scenic`, the params converted with `scenic_to_state_dict`, and every recorded output is
compared: eval logits, the final token sequence, the pooled features, train-mode per-modality logits, the
intermediates of fixture a, and (in float64) the float64 logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbt import MBT, MBTConfig
from mbt.weights import scenic_to_state_dict
from tests.conftest import FIXTURE_NAMES, fixture_dir

ATOL_F32 = 1e-5
ATOL_F64 = 1e-9


def build(fx) -> MBT:
    config = MBTConfig.from_scenic(fx.kwargs, fx.meta["input_shapes"])
    model = MBT(config)
    model.load_state_dict(scenic_to_state_dict(fx.params, config))
    return model.eval()


def max_diff(a: torch.Tensor, b: np.ndarray) -> float:
    assert tuple(a.shape) == b.shape, (tuple(a.shape), b.shape)
    return float(np.abs(a.detach().double().numpy() - b.astype(np.float64)).max())


def test_every_fixture_is_covered():
    found = sorted(p.stem for p in fixture_dir().glob("*.npz"))
    assert found == sorted(FIXTURE_NAMES), "a fixture exists that no test runs, or one is missing"


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_eval_outputs_match_scenic(name, load_fixture):
    fx = load_fixture(name)
    model = build(fx)
    with torch.no_grad():
        out = model(fx.inputs())
    assert max_diff(out.logits, fx["output/logits"]) <= ATOL_F32
    assert max_diff(out.tokens, fx["output/preclassifier"]) <= ATOL_F32
    if fx.has("output/prelogits"):
        assert max_diff(out.pre_logits, fx["output/prelogits"]) <= ATOL_F32
    else:
        recorded = sorted(k.split("/")[-1] for k in fx.data.files if k.startswith("output/prelogits/"))
        assert sorted(out.pre_logits) == recorded == sorted(model.config.modality_fusion)
        for m in recorded:
            assert max_diff(out.pre_logits[m], fx[f"output/prelogits/{m}"]) <= ATOL_F32


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_float64_logits_match_scenic(name, load_fixture):
    fx = load_fixture(name)
    model = build(fx).double()
    with torch.no_grad():
        out = model(fx.inputs(torch.float64))
    assert out.logits.dtype == torch.float64
    assert max_diff(out.logits, fx["output_f64/logits"]) <= ATOL_F64


@pytest.mark.parametrize("name", [n for n in FIXTURE_NAMES if n[0] in "ag"])
def test_train_mode_modality_logits_match_scenic(name, load_fixture):
    fx = load_fixture(name)
    keys = [k for k in fx.data.files if k.startswith("output/train/logits/")]
    assert keys, "fixtures a and g record train-mode logits"
    model = build(fx).train()  # dropout and stochastic depth are 0 in the fixtures: deterministic
    with torch.no_grad():
        out = model(fx.inputs())
    assert sorted(out.modality_logits) == sorted(k.split("/")[-1] for k in keys)
    for k in keys:
        assert max_diff(out.modality_logits[k.split("/")[-1]], fx[k]) <= ATOL_F32
    # the train-mode `logits` field is the mean of the per-modality logits
    mean = sum(out.modality_logits.values()) / len(out.modality_logits)
    torch.testing.assert_close(out.logits, mean, rtol=0, atol=0)


def test_train_mode_uses_bottlenecks_even_without_test_bottlenecks(load_fixture):
    """g has the params of a with test_with_bottlenecks=False: train mode fuses (as a), eval mode does not."""
    a, g = load_fixture("a_bottleneck_token"), load_fixture("g_bottleneck_no_test_bottlenecks")
    model = build(g)
    with torch.no_grad():
        eval_out = model.eval()(g.inputs())
        train_out = model.train()(g.inputs())
    assert max_diff(eval_out.logits, g["output/logits"]) <= ATOL_F32
    for m in ("rgb", "spectrogram"):
        assert max_diff(train_out.modality_logits[m], a[f"output/train/logits/{m}"]) <= ATOL_F32
    assert max_diff(eval_out.logits, a["output/logits"]) > 1e-3  # they really differ


def test_intermediates_of_fixture_a(load_fixture):
    """Embeddings, position-embedded tokens and every encoder block's output (with bottleneck tokens appended
    in the fusion layers) equal Scenic's recorded intermediates."""
    fx = load_fixture("a_bottleneck_token")
    model = build(fx)
    captured: dict[str, torch.Tensor] = {}
    hooks = []

    def keep(name):
        return lambda module, args, output: captured.__setitem__(name, output.detach())

    for m, suffix in (("rgb", ""), ("spectrogram", "_spectrogram")):
        tok = model.tokenizers[m]
        hooks.append(tok.patch_embed.register_forward_hook(keep(f"embedding{suffix}")))
        posemb = "posembed_input" + suffix
        hooks.append(tok.register_forward_hook(keep(f"Transformer/{posemb}")))
        for layer, block in enumerate(model.encoders[m]):
            hooks.append(block.register_forward_hook(keep(f"Transformer/encoderblock_{layer}{suffix}")))
    with torch.no_grad():
        model(fx.inputs())
    for h in hooks:
        h.remove()

    recorded = [k for k in fx.data.files if k.startswith("intermediates/")]
    assert len(recorded) == 12
    for key in recorded:
        name = key[len("intermediates/"):-len("/__call__/0")]
        ref = fx[key]
        got = captured[name]
        if name.startswith("embedding"):  # Scenic records the conv output grid (B, *grid, D); ours is (B, N, D)
            got = got.reshape(ref.shape)
        assert max_diff(got, ref) <= ATOL_F32, name
