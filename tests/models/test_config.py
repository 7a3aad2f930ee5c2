"""MBTConfig: Scenic mapping, presets, validation messages, serialisation."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from mbt import MBT, MBTConfig, ConfigError
from tests.conftest import FIXTURE_NAMES


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_from_scenic_sizes_position_embeddings_like_flax(name, load_fixture):
    """Flax sizes the position embeddings from the input; from_scenic must give the same token counts."""
    fx = load_fixture(name)
    config = MBTConfig.from_scenic(fx.kwargs, fx.meta["input_shapes"])
    assert config.modality_fusion == tuple(fx.kwargs["modality_fusion"])
    for m in config.modality_fusion:
        flax_name = "posembed_input" if m == "rgb" else f"posembed_input_{m}"
        assert fx[f"params/Transformer/{flax_name}/pos_embedding"].shape[1] == config.num_tokens(m)
    if config.use_bottleneck:
        assert fx["params/bottleneck"].shape[1] == config.n_bottleneck_tokens


def test_from_scenic_reorders_patch_sizes(load_fixture):
    fx = load_fixture("e_late_fusion")  # patches.size [8, 4, 2] = (h, w, t)
    config = MBTConfig.from_scenic(fx.kwargs, fx.meta["input_shapes"])
    assert config.rgb_patch_size == (2, 8, 4)
    assert config.spectrogram_patch_size == (8, 4)
    assert config.token_grid("rgb") == (4, 4, 8)
    assert config.token_grid("spectrogram") == (12, 8)  # 100 // 8 (VALID drops the remainder), 32 // 4


def test_temporal_sampling_indices_match_scenic(load_fixture):
    fx = load_fixture("i_temporal_sampling_2d")
    config = MBTConfig.from_scenic(fx.kwargs, fx.meta["input_shapes"])
    assert list(config.rgb_frame_indices) == fx.meta["temporal_sampling_frame_indices"] == [2, 3, 5, 6]


@pytest.mark.parametrize("t,n", [(8, 4), (32, 8), (16, 3), (10, 10), (10, 20), (7, 1), (100, 7), (30, 4)])
def test_temporal_sampling_indices_rule(t, n):
    """Second implementation of Scenic's rule in exact arithmetic: k * T / (n + 1) for k = 1..n, rounded half to
    even (jnp.round), clipped to T - 1; every frame when n >= T."""
    config = MBTConfig(modality_fusion=("rgb",), temporal_encoding="temporal_sampling", n_sampled_frames=n,
                       rgb_patch_size=(1, 16, 16), num_frames=t)
    if n >= t:
        expected = list(range(t))
    else:
        expected = [min(round(Fraction(k * t, n + 1)), t - 1) for k in range(1, n + 1)]  # round(): half to even
    assert list(config.rgb_frame_indices) == expected


def test_preset_mbt_b16x2():
    config = MBTConfig.from_preset("mbt-b16x2")
    assert config == MBTConfig()  # the dataclass defaults are the preset
    assert (config.hidden_size, config.num_layers, config.num_heads, config.mlp_dim) == (768, 12, 12, 3072)
    assert config.rgb_patch_size == (2, 16, 16) and config.num_frames == 32 and config.image_size == (224, 224)
    assert config.spectrogram_shape == (800, 128) and config.spectrogram_patch_size == (16, 16)
    assert config.use_bottleneck and config.fusion_layer == 8 and config.n_bottlenecks == 4
    assert config.classifier == "token" and config.num_classes == 527
    # token counts of the released model (reference A.10)
    assert config.num_tokens("rgb") == 3137 and config.num_tokens("spectrogram") == 401
    assert config.n_bottleneck_tokens == 5
    assert MBTConfig.from_preset("mbt-b16x2", num_classes=10).num_classes == 10
    with pytest.raises(ConfigError, match="unknown preset 'mbt-x'.*mbt-b16x2"):
        MBTConfig.from_preset("mbt-x")


def test_preset_parameter_count_matches_released_model():
    """Reference A.10: one block has 7,087,872 parameters and the AV model about 175.0 M (3-channel spectrogram
    embedding, as in the released checkpoints)."""
    import torch

    with torch.device("meta"):
        model = MBT(MBTConfig.from_preset("mbt-b16x2", spectrogram_channels=3))
    assert sum(p.numel() for p in model.encoders["rgb"][0].parameters()) == 7_087_872
    total = sum(p.numel() for p in model.parameters())
    assert abs(total - 175.0e6) < 0.05e6, total


@pytest.mark.parametrize("changes, field, allowed", [
    (dict(fusion_layer=13), "fusion_layer", "0..num_layers = 0..12"),
    (dict(fusion_layer=-1), "fusion_layer", "0..num_layers"),
    (dict(modality_fusion=("rgb", "audio")), "modality_fusion", "'rgb', 'spectrogram'"),
    (dict(modality_fusion=()), "modality_fusion", "at least one"),
    (dict(modality_fusion=("rgb", "rgb")), "modality_fusion", "once"),
    (dict(classifier="cls"), "classifier", "'token', 'gap', 'gmp', 'gsp'"),
    (dict(hidden_size=100), "hidden_size", "not divisible by num_heads = 12"),
    (dict(n_bottlenecks=0), "n_bottlenecks", ">= 1 when use_bottleneck"),
    (dict(temporal_encoding="2d"), "temporal_encoding", "'3d_conv', 'temporal_sampling'"),
    (dict(temporal_encoding="temporal_sampling", rgb_patch_size=(1, 16, 16)), "n_sampled_frames", ">= 1"),
    (dict(temporal_encoding="temporal_sampling", n_sampled_frames=8), "rgb_patch_size", "t must be 1"),
    (dict(dropout_rate=1.0), "dropout_rate", "[0, 1)"),
    (dict(stochastic_droplayer_rate=-0.1), "stochastic_droplayer_rate", "[0, 1)"),
    (dict(representation_size=0), "representation_size", ">= 1"),
    (dict(num_classes=0), "num_classes", ">= 1"),
    (dict(rgb_patch_size=(2, 16)), "rgb_patch_size", "(t, h, w)"),
    (dict(image_size=(8, 224)), "rgb_patch_size", "does not fit"),
    (dict(spectrogram_shape=(800, 8)), "spectrogram_patch_size", "does not fit"),
    (dict(use_bottleneck="yes"), "use_bottleneck", "True or False"),
])
def test_invalid_configs_fail_naming_field_and_allowed_values(changes, field, allowed):
    with pytest.raises(ConfigError) as e:
        MBTConfig(**changes)
    assert field in str(e.value) and allowed in str(e.value), str(e.value)


def test_bottleneck_count_is_free_without_bottleneck():
    assert MBTConfig(use_bottleneck=False, n_bottlenecks=0).n_bottlenecks == 0


def test_dict_roundtrip_and_unknown_fields(tmp_path):
    config = MBTConfig(modality_fusion=("rgb",), hidden_size=64, num_heads=4, num_layers=2, mlp_dim=128,
                       fusion_layer=0, classifier="gap", num_classes=3, representation_size=16)
    path = tmp_path / "config.json"
    config.to_json_file(path)
    assert MBTConfig.from_json_file(path) == config
    d = json.loads(path.read_text())
    assert d["model_type"] == "mbt" and d["modality_fusion"] == ["rgb"]
    d["fusion_layr"] = 2
    path.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=r"config.json: unknown MBTConfig field\(s\) \['fusion_layr'\]"):
        MBTConfig.from_json_file(path)
    d.pop("fusion_layr")
    d["fusion_layer"] = 9
    path.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=r"config.json: MBTConfig.fusion_layer = 9"):
        MBTConfig.from_json_file(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        MBTConfig.from_json_file(path)


def test_from_scenic_errors():
    base = dict(hidden_size=64, num_layers=2, num_heads=4, mlp_dim=128, num_classes=3, patches={"size": [8, 8, 2]},
                temporal_encoding_config={"method": "3d_conv"}, modality_fusion=["rgb"], classifier="token")
    shapes = {"rgb": [1, 8, 32, 32, 3]}
    assert MBTConfig.from_scenic(base, shapes).dropout_rate == 0.1  # Scenic's build_flax_model default
    with pytest.raises(ConfigError, match="unknown Scenic MBT argument.*'foo'"):
        MBTConfig.from_scenic({**base, "foo": 1}, shapes)
    with pytest.raises(ConfigError, match="input_shapes has no entry for \\['rgb'\\]"):
        MBTConfig.from_scenic(base, {"spectrogram": [1, 100, 32, 1]})
    with pytest.raises(ConfigError, match="factorized_encoder"):
        MBTConfig.from_scenic({**base, "attention_config": {"type": "factorized_encoder"}}, shapes)
    with pytest.raises(ConfigError, match="classifier '0'"):
        MBTConfig.from_scenic({**base, "classifier": "0"}, shapes)


def test_from_scenic_spectrogram_only_needs_no_temporal_encoding():
    kwargs = dict(hidden_size=64, num_layers=2, num_heads=4, mlp_dim=128, num_classes=3, patches={"size": [8, 8]},
                  modality_fusion=["spectrogram"], classifier="token", temporal_encoding_config={})
    config = MBTConfig.from_scenic(kwargs, {"spectrogram": [1, 100, 32, 1]})
    assert config.modality_fusion == ("spectrogram",) and config.spectrogram_patch_size == (8, 8)
    with pytest.raises(ConfigError, match="temporal_encoding_config.method must be one of"):
        MBTConfig.from_scenic({**kwargs, "modality_fusion": ["rgb"]}, {"rgb": [1, 8, 32, 32, 3]})


def test_from_scenic_warns_that_dtype_is_not_kept():
    kwargs = dict(hidden_size=64, num_layers=2, num_heads=4, mlp_dim=128, num_classes=3, patches={"size": [8, 8]},
                  modality_fusion=["spectrogram"], dtype="bfloat16")
    with pytest.warns(UserWarning, match="dtype 'bfloat16' is not part of MBTConfig"):
        MBTConfig.from_scenic(kwargs, {"spectrogram": [1, 100, 32, 1]})
