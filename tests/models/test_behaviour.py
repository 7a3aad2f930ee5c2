"""Behaviour beyond the fixtures, on small random models: where information flows, where gradients go, missing
modalities, and the training-time regularisers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbt import MBT, MBTConfig
from mbt.models.mbt import EncoderBlock
from tests.conftest import randomize_, random_inputs

L = 4


def small_config(**changes) -> MBTConfig:
    base = dict(modality_fusion=("spectrogram", "rgb"), hidden_size=32, num_layers=L, num_heads=4, mlp_dim=64,
                num_classes=5, rgb_patch_size=(2, 8, 8), num_frames=4, image_size=(16, 16),
                spectrogram_patch_size=(8, 8), spectrogram_shape=(32, 16), stochastic_droplayer_rate=0.0,
                fusion_layer=2, use_bottleneck=True)
    base.update(changes)
    return MBTConfig(**base)


def small_model(**changes) -> MBT:
    torch.manual_seed(0)
    return randomize_(MBT(small_config(**changes))).eval()


MODES = {
    "late": dict(use_bottleneck=False, fusion_layer=L),
    "vanilla_early": dict(use_bottleneck=False, fusion_layer=0),
    "vanilla_mid": dict(use_bottleneck=False, fusion_layer=2),
    "vanilla_shared_early": dict(use_bottleneck=False, share_encoder=True, fusion_layer=0),
    "vanilla_shared_mid": dict(use_bottleneck=False, share_encoder=True, fusion_layer=2),
    "bottleneck_early": dict(fusion_layer=0),
    "bottleneck_mid": dict(fusion_layer=2),
    "bottleneck_late": dict(fusion_layer=L),
    "bottleneck_no_test_bottlenecks": dict(fusion_layer=1, test_with_bottlenecks=False),
    "bottleneck_shared": dict(fusion_layer=1, share_encoder=True),
    "bottleneck_gap": dict(fusion_layer=2, classifier="gap"),
    "vanilla_gmp_repr": dict(use_bottleneck=False, fusion_layer=1, classifier="gmp", representation_size=8),
    "bottleneck_gsp": dict(fusion_layer=1, classifier="gsp"),
}


def perturbed(inputs, modality, seed=99):
    g = torch.Generator().manual_seed(seed)
    out = dict(inputs)
    out[modality] = inputs[modality] + torch.randn(inputs[modality].shape, generator=g)
    return out


@pytest.mark.parametrize("use_bottleneck", [False, True])
def test_late_fusion_audio_never_reaches_rgb_tokens(use_bottleneck):
    model = small_model(fusion_layer=L, use_bottleneck=use_bottleneck)
    x = random_inputs(model.config)
    with torch.no_grad():
        a, b = model(x), model(perturbed(x, "spectrogram"))
    rgb, spec = a.token_slices["rgb"], a.token_slices["spectrogram"]
    assert torch.equal(a.tokens[:, rgb], b.tokens[:, rgb])
    assert torch.equal(a.modality_logits["rgb"], b.modality_logits["rgb"])
    assert not torch.allclose(a.tokens[:, spec], b.tokens[:, spec])


def rgb_block_outputs(model, inputs):
    """Each layer's rgb-block output (the rgb tokens, then bottleneck tokens in fusion layers)."""
    outs = []
    hooks = [blk.register_forward_hook(lambda m, a, o: outs.append(o.detach())) for blk in model.encoders["rgb"]]
    with torch.no_grad():
        model(inputs)
    for h in hooks:
        h.remove()
    return outs


@pytest.mark.parametrize("fusion_layer", range(L + 1))
def test_bottleneck_information_reaches_rgb_only_from_the_fusion_layer_on(fusion_layer):
    """Audio reaches the bottleneck in the fusion layer (after the rgb block has read the same incoming
    bottleneck), so the rgb tokens change from the layer after it; nothing changes before."""
    model = small_model(fusion_layer=fusion_layer)
    x = random_inputs(model.config)
    before, after = rgb_block_outputs(model, x), rgb_block_outputs(model, perturbed(x, "spectrogram"))
    n_rgb = model.config.num_tokens("rgb")
    for layer in range(L):
        same_tokens = torch.equal(before[layer][:, :n_rgb], after[layer][:, :n_rgb])
        assert same_tokens == (layer <= fusion_layer), (layer, fusion_layer)
        if layer >= fusion_layer:  # fusion layers carry the bottleneck tokens after the rgb tokens
            assert before[layer].shape[1] == n_rgb + model.config.n_bottleneck_tokens
            same_bottleneck = torch.equal(before[layer][:, n_rgb:], after[layer][:, n_rgb:])
            assert same_bottleneck == (layer == fusion_layer)
        else:
            assert before[layer].shape[1] == n_rgb


@pytest.mark.parametrize("fusion_layer", range(L + 1))
def test_vanilla_information_reaches_rgb_from_the_fusion_layer(fusion_layer):
    model = small_model(fusion_layer=fusion_layer, use_bottleneck=False)
    x = random_inputs(model.config)
    before, after = rgb_block_outputs(model, x), rgb_block_outputs(model, perturbed(x, "spectrogram"))
    for layer in range(L):
        assert torch.equal(before[layer], after[layer]) == (layer < fusion_layer), (layer, fusion_layer)


@pytest.mark.parametrize("fusion_layer", range(L + 1))
@pytest.mark.parametrize("test_with_bottlenecks", [True, False])
def test_gradients_reach_bottleneck_exactly_when_a_fusion_layer_exists(fusion_layer, test_with_bottlenecks):
    model = small_model(fusion_layer=fusion_layer, test_with_bottlenecks=test_with_bottlenecks).train()
    out = model(random_inputs(model.config))
    sum(l.square().sum() for l in out.modality_logits.values()).backward()
    grad = model.bottleneck.grad
    if fusion_layer < L:
        assert grad is not None and grad.abs().sum() > 0
    else:
        assert grad is None or grad.abs().sum() == 0


def reference_single_modality(model: MBT, modality: str, x: torch.Tensor) -> torch.Tensor:
    """Second implementation of a bottleneck model run on one modality: blocks on [tokens ; bottleneck] from the
    fusion layer on, the bottleneck being that modality's own update; then norm and the head."""
    cfg = model.config
    tokens = model.tokenizers[modality](x)
    n = tokens.shape[1]
    fused = cfg.use_bottleneck and (model.training or cfg.test_with_bottlenecks)
    b = model.bottleneck.expand(x.shape[0], -1, -1) if fused else None
    for layer in range(cfg.num_layers):
        blk = model.block(modality, layer)
        if layer < cfg.fusion_layer or not fused:
            tokens = blk(tokens)
        else:
            out = blk(torch.cat([tokens, b], 1))
            tokens, b = out[:, :n], out[:, n:]
    tokens = model.encoder_norm(tokens)
    pooled = tokens[:, 0] if cfg.classifier == "token" else {
        "gap": tokens.mean(1), "gmp": tokens.amax(1), "gsp": tokens.sum(1)}[cfg.classifier]
    if model.pre_logits is not None:
        pooled = torch.tanh(model.pre_logits(pooled))
    return model.output_projection(pooled)


def single_modality_twin(model: MBT, modality: str) -> MBT:
    """The same weights in a model configured with one modality (Scenic's unimodal layers)."""
    twin = MBT(model.config.replace(modality_fusion=(modality,), use_bottleneck=False)).eval()
    state = {k: v for k, v in model.state_dict().items() if k != "bottleneck"}
    state = {k: v for k, v in state.items() if not k.startswith("tokenizers.") or k.startswith(f"tokenizers.{modality}")}
    if not model.config.share_encoder:
        state = {k: v for k, v in state.items() if not k.startswith("encoders.") or k.startswith(f"encoders.{modality}")}
    twin.load_state_dict(state)
    return twin


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("present", ["rgb", "spectrogram"])
def test_a_modality_can_be_missing_at_inference(mode, present):
    model = small_model(**MODES[mode])
    full = random_inputs(model.config)
    with torch.no_grad():
        out = model({present: full[present]})
        out_none = model({present: full[present], ("spectrogram" if present == "rgb" else "rgb"): None})
    assert out.logits.shape == (2, 5) and torch.isfinite(out.logits).all()
    assert torch.equal(out.logits, out_none.logits)
    assert list(out.token_slices) == [present]
    assert out.tokens.shape[1] == model.config.num_tokens(present)
    if model.config.classifier == "token":
        assert list(out.modality_logits) == [present]
        torch.testing.assert_close(out.logits, out.modality_logits[present], rtol=0, atol=0)
    with torch.no_grad():
        if model.config.use_bottleneck:
            expected = reference_single_modality(model, present, full[present])
        else:  # vanilla or late fusion with one modality left is that modality's unimodal stream
            expected = single_modality_twin(model, present)({present: full[present]}).logits
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)


def test_missing_modality_changes_nothing_for_late_fusion_token_head():
    model = small_model(fusion_layer=L, use_bottleneck=False)
    x = random_inputs(model.config)
    with torch.no_grad():
        both, rgb_only = model(x), model({"rgb": x["rgb"]})
    torch.testing.assert_close(rgb_only.logits, both.modality_logits["rgb"], rtol=1e-6, atol=1e-6)


def test_input_errors_name_the_problem():
    model = small_model()
    x = random_inputs(model.config)
    with pytest.raises(ValueError, match=r"no input for any configured modality.*got keys \['audio'\]"):
        model({"audio": x["spectrogram"]})
    with pytest.raises(ValueError, match=r"input 'rgb' has shape \(2, 4, 3, 16, 16\).*\(B, C, T, H, W\) = "
                                         r"\(B, 3, 4, 16, 16\)"):
        model({"rgb": x["rgb"].transpose(1, 2)})
    with pytest.raises(ValueError, match="different batch sizes"):
        model({"rgb": x["rgb"], "spectrogram": x["spectrogram"][:1]})


def test_one_channel_spectrogram_feeds_a_three_channel_model():
    """The released models take 3 identical log-mel channels; a 1-channel input is broadcast to them."""
    model = small_model(spectrogram_channels=3)
    x = random_inputs(model.config.replace(spectrogram_channels=1))
    with torch.no_grad():
        a = model(x)
        b = model({**x, "spectrogram": x["spectrogram"].repeat(1, 3, 1, 1)})
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)


def test_stochastic_depth_is_per_example_and_unscaled():
    config = small_config(stochastic_droplayer_rate=0.3)
    block = EncoderBlock(config, droplayer_p=0.3).train()
    torch.manual_seed(0)
    y = torch.rand(4000, 3, 5) + 1.0
    out = block._drop_path(y)
    kept = (out == y).all(dim=(1, 2))
    dropped = (out == 0).all(dim=(1, 2))
    assert (kept | dropped).all(), "each example is kept whole or dropped whole, and kept values are not rescaled"
    rate = dropped.float().mean().item()
    assert abs(rate - 0.3) < 5 * (0.3 * 0.7 / 4000) ** 0.5, rate
    assert torch.equal(block.eval()._drop_path(y), y)


def test_stochastic_depth_schedule_is_linear_to_the_last_layer():
    model = MBT(small_config(stochastic_droplayer_rate=0.3))
    rates = [blk.droplayer_p for blk in model.encoders["rgb"]]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_regularisers_act_in_training_only():
    model = small_model(dropout_rate=0.3, attention_dropout_rate=0.3, stochastic_droplayer_rate=0.3)
    x = random_inputs(model.config)
    with torch.no_grad():
        e1, e2 = model.eval()(x).logits, model(x).logits
        t1, t2 = model.train()(x).logits, model(x).logits
    assert torch.equal(e1, e2)
    assert not torch.equal(t1, t2)


def test_output_is_the_same_dataclass_in_train_and_eval():
    model = small_model()
    x = random_inputs(model.config)
    a, b = model.train()(x), model.eval()(x)
    assert type(a) is type(b)
    assert a.logits.shape == b.logits.shape == (2, 5)
    assert set(a.modality_logits) == set(b.modality_logits) == {"rgb", "spectrogram"}


# ---------------------------------------------------------------------------------------------------- heads
@pytest.mark.parametrize("classifier, pool", [("gap", np.mean), ("gmp", np.max), ("gsp", np.sum)])
def test_pooled_heads_against_numpy(classifier, pool):
    """Pooling over every token of the final sequence, then the head, recomputed in numpy from `tokens`."""
    model = small_model(classifier=classifier, fusion_layer=1)
    with torch.no_grad():
        out = model(random_inputs(model.config))
    pooled = pool(out.tokens.double().numpy(), axis=1)
    w = model.output_projection.weight.detach().double().numpy()
    b = model.output_projection.bias.detach().double().numpy()
    np.testing.assert_allclose(out.pre_logits.double().numpy(), pooled, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.logits.double().numpy(), pooled @ w.T + b, rtol=1e-5, atol=1e-5)


def test_token_head_against_numpy():
    model = small_model(representation_size=6)
    with torch.no_grad():
        out = model(random_inputs(model.config))
    tokens = out.tokens.double().numpy()
    wp, bp = model.pre_logits.weight.detach().double().numpy(), model.pre_logits.bias.detach().double().numpy()
    w, b = model.output_projection.weight.detach().double().numpy(), model.output_projection.bias.detach().double().numpy()
    n_spec = model.config.num_tokens("spectrogram")  # modality_fusion = (spectrogram, rgb): CLS at 0 and n_spec
    per_modality = [np.tanh(tokens[:, i] @ wp.T + bp) @ w.T + b for i in (0, n_spec)]
    np.testing.assert_allclose(out.logits.double().numpy(), sum(per_modality) / 2, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- regularisers
def block_with(droplayer_p: float = 0.0, **rates) -> EncoderBlock:
    config = small_config(**{"dropout_rate": 0.0, "attention_dropout_rate": 0.0, **rates})
    torch.manual_seed(0)
    block = EncoderBlock(config, droplayer_p=droplayer_p)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    return block.train()


def capture(module: torch.nn.Module, store: list):
    return module.register_forward_hook(lambda m, a, o: store.append((a[0].detach(), o.detach())))


@pytest.mark.parametrize("name", ["drop", "mlp.drop1", "mlp.drop2"])
def test_each_dropout_is_applied_per_element_with_rescaling(name):
    """The dropout after attention and both MLP dropouts act in training: about p of the elements are zeroed and
    the rest scaled by 1/(1-p) (Flax nn.Dropout)."""
    block = block_with(dropout_rate=0.4)
    seen: list = []
    handle = capture(block.get_submodule(name), seen)
    block(torch.randn(64, 10, 32))
    handle.remove()
    assert len(seen) == 1, f"{name} was not applied"
    x, y = seen[0]
    zero = y == 0
    assert abs(zero.float().mean().item() - 0.4) < 0.02
    torch.testing.assert_close(y[~zero], x[~zero] / 0.6)
    # per element: within one example and token, some features are dropped and some kept
    assert (zero.any(-1) & (~zero).any(-1)).float().mean() > 0.95


def test_attention_dropout_is_active_in_training_and_unbiased():
    block = block_with(attention_dropout_rate=0.5)
    attn = block.attn
    x = torch.randn(1, 12, 32)
    with torch.no_grad():
        ref = attn.eval()(x)[0]
        samples = attn.train()(x.expand(4000, -1, -1))  # each example draws its own masks
    assert not torch.allclose(samples[0], samples[1])
    # dropout on the attention weights with 1/(1-p) rescaling leaves the expectation unchanged
    stderr = samples.std(0) / len(samples) ** 0.5
    assert ((samples.mean(0) - ref).abs() <= 5 * stderr + 1e-6).all()


def test_drop_path_masks_of_the_two_branches_are_independent():
    block = block_with(droplayer_p=0.5)
    masks: list = []
    original = block._drop_path

    def recording(y):
        out = original(y)
        masks.append((out == 0).flatten(1).all(1))
        return out

    block._drop_path = recording
    block(torch.randn(4000, 5, 32))
    assert len(masks) == 2, "one draw for the attention branch and one for the MLP branch"
    attn_dropped, mlp_dropped = masks
    assert abs(attn_dropped.float().mean() - 0.5) < 0.05 and abs(mlp_dropped.float().mean() - 0.5) < 0.05
    agree = (attn_dropped == mlp_dropped).float().mean().item()
    assert abs(agree - 0.5) < 0.05, agree  # independent draws agree half the time; a shared mask always
