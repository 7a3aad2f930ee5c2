"""Scenic -> PyTorch conversion: parameter mapping, checkpoint files, `mbt convert`, model directories."""

from __future__ import annotations

import json
import subprocess
import sys

import msgpack
import numpy as np
import pytest
import torch

from mbt import MBT, MBTConfig
from mbt.cli import main
from mbt.weights import (CheckpointError, infer_config, read_flax_checkpoint, scenic_params_from_checkpoint,
                         scenic_to_state_dict, state_dict_to_scenic)
from tests.conftest import FIXTURE_NAMES, fixture_dir, randomize_, random_inputs

# Options a user passes to `mbt convert` for the fixtures' small models.
FIXTURE_FLAGS = ["--num-frames", "8", "--image-size", "32x32", "--spectrogram-shape", "100x32"]


def fixture_logits(fx, model: MBT) -> float:
    with torch.no_grad():
        out = model(fx.inputs())
    return float((out.logits - torch.from_numpy(fx["output/logits"])).abs().max())


# ------------------------------------------------------------------------------------------- parameter mapping
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_state_dict_roundtrips_to_the_same_flax_params(name, load_fixture):
    fx = load_fixture(name)
    config = MBTConfig.from_scenic(fx.kwargs, fx.meta["input_shapes"])
    params = fx.params
    back = state_dict_to_scenic(scenic_to_state_dict(params, config), config)
    assert sorted(back) == sorted(k[len("params/"):] for k in params)
    for k, v in back.items():
        np.testing.assert_array_equal(v, params["params/" + k])


def test_conversion_accepts_nested_and_unprefixed_params(load_fixture):
    fx = load_fixture("a_bottleneck_token")
    config = MBTConfig.from_scenic(fx.kwargs, fx.meta["input_shapes"])
    flat = scenic_to_state_dict(fx.params, config)
    unprefixed = scenic_to_state_dict({k[len("params/"):]: v for k, v in fx.params.items()}, config)
    nested: dict = {}
    for k, v in fx.params.items():
        node = nested
        *parents, leaf = k.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    from_nested = scenic_to_state_dict(nested, config)
    for k in flat:
        assert torch.equal(flat[k], unprefixed[k]) and torch.equal(flat[k], from_nested[k])


def test_conversion_errors_name_the_parameter(load_fixture):
    fx = load_fixture("a_bottleneck_token")
    config = MBTConfig.from_scenic(fx.kwargs, fx.meta["input_shapes"])
    params = dict(fx.params)
    missing = dict(params)
    del missing["params/Transformer/encoderblock_1/MlpBlock_0/Dense_0/bias"]
    with pytest.raises(CheckpointError, match=r"missing parameter\(s\) \['Transformer/encoderblock_1/MlpBlock_0/"
                                              r"Dense_0/bias'\]"):
        scenic_to_state_dict(missing, config)
    with pytest.raises(CheckpointError, match=r"unexpected parameter\(s\) \['head/kernel'\]"):
        scenic_to_state_dict({**params, "params/head/kernel": np.zeros((64, 7), np.float32)}, config)
    wrong = {**params, "params/bottleneck": np.zeros((1, 3, 64), np.float32)}
    with pytest.raises(CheckpointError, match=r"wrong shape: \['bottleneck: \(1, 3, 64\), expected \(1, 5, 64\)'\]"):
        scenic_to_state_dict(wrong, config)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_infer_config_recovers_what_the_tree_tells(name, load_fixture):
    fx = load_fixture(name)
    config = MBTConfig.from_scenic(fx.kwargs, fx.meta["input_shapes"])
    shapes = fx.meta["input_shapes"]
    geometry = {}
    if "rgb" in shapes:
        geometry.update(num_frames=shapes["rgb"][1], image_size=shapes["rgb"][2:4])
    if "spectrogram" in shapes:
        geometry.update(spectrogram_shape=shapes["spectrogram"][1:3])
    inferred = infer_config(
        fx.params, fusion_layer=config.fusion_layer, test_with_bottlenecks=config.test_with_bottlenecks,
        modality_fusion=config.modality_fusion, classifier=None if config.classifier == "token" else config.classifier,
        n_sampled_frames=config.n_sampled_frames, **geometry)
    # Training-only rates are not in a checkpoint; everything else must agree.
    rates = dict(dropout_rate=0.0, attention_dropout_rate=0.0, stochastic_droplayer_rate=0.0)
    expected = config.replace(**rates)
    if config.use_bottleneck is False:  # n_bottlenecks is irrelevant and not stored without a bottleneck
        expected = expected.replace(n_bottlenecks=inferred.n_bottlenecks)
    if "rgb" not in config.modality_fusion:  # rgb geometry of a spectrogram-only model is not stored
        expected = expected.replace(**{k: getattr(inferred, k) for k in (
            "num_frames", "image_size", "rgb_patch_size", "rgb_channels", "temporal_encoding")})
    assert inferred == expected


def test_infer_config_rejects_wrong_input_sizes(load_fixture):
    fx = load_fixture("a_bottleneck_token")
    with pytest.raises(CheckpointError, match=r"rgb position embedding has 65 tokens, but 32 frames of \(224, 224\)"
                                              r".*--num-frames/--image-size"):
        infer_config(fx.params, fusion_layer=2, spectrogram_shape=(100, 32))
    with pytest.raises(CheckpointError, match="4 layers.*--fusion-layer"):
        infer_config(fx.params, num_frames=8, image_size=(32, 32), spectrogram_shape=(100, 32))
    with pytest.raises(CheckpointError, match="--classifier gap does not match"):
        infer_config(fx.params, fusion_layer=2, classifier="gap", num_frames=8, image_size=(32, 32),
                     spectrogram_shape=(100, 32))


# ------------------------------------------------------------------------------------------- checkpoint files
def test_both_checkpoint_layouts_hold_the_fixture_params(load_fixture):
    for ckpt, name in (("checkpoint_a", "a_bottleneck_token"), ("checkpoint_f_legacy", "f_spectrogram_only")):
        fx = load_fixture(name)
        tree = read_flax_checkpoint(fixture_dir() / ckpt / "checkpoint_1")
        params = scenic_params_from_checkpoint(tree)
        assert sorted(params) == sorted(k[len("params/"):] for k in fx.params)
        for k, v in params.items():
            np.testing.assert_array_equal(v, fx["params/" + k])


@pytest.mark.parametrize("ckpt, name, flags", [
    ("checkpoint_a", "a_bottleneck_token", ["--fusion-layer", "2", *FIXTURE_FLAGS]),
    ("checkpoint_f_legacy", "f_spectrogram_only", ["--spectrogram-shape", "100x32"]),
])
def test_mbt_convert_reproduces_fixture_logits(ckpt, name, flags, tmp_path, load_fixture, capsys):
    fx = load_fixture(name)
    out_dir = tmp_path / "model"
    assert main(["convert", str(fixture_dir() / ckpt / "checkpoint_1"), str(out_dir), *flags]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json", "model.safetensors",
                                                         "preprocessor_config.json"]
    model = MBT.from_pretrained(out_dir)
    assert not model.training
    assert fixture_logits(fx, model) <= 1e-5


def test_mbt_convert_console_script_runs(tmp_path):
    """The installed `mbt` entry point, as a user runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "mbt.cli", "convert", str(fixture_dir() / "checkpoint_a" / "checkpoint_1"),
         str(tmp_path / "m"), "--fusion-layer", "2", *FIXTURE_FLAGS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "m" / "config.json").read_text())["fusion_layer"] == 2


def test_converted_model_predicts_and_evaluates_at_once(tmp_path, capsys):
    """`mbt convert` writes the data config the model expects (the official AudioSet sampling and statistics, shapes
    from the model), so `mbt predict` and `mbt eval` run on the converted directory with nothing written by hand."""
    from mbt import MBTConfig
    from mbt.data import DataConfig, load_pretrained
    from mbt.weights import scenic_data_config
    from mbt.data.synthetic import tone_schedule, write_media

    out_dir = tmp_path / "model"
    assert main(["convert", str(fixture_dir() / "checkpoint_a" / "checkpoint_1"), str(out_dir), "--fusion-layer",
                 "2", *FIXTURE_FLAGS]) == 0
    assert "Google's exact extractor is unknown" in capsys.readouterr().err
    model, data = load_pretrained(out_dir)
    assert isinstance(data, DataConfig) and data.modalities == tuple(model.config.modality_fusion)
    assert (data.fps, data.stride, data.min_resize, data.num_test_clips) == (25.0, 2, 37, 4)  # 256/224 of 32 px
    assert scenic_data_config(MBTConfig.from_preset("mbt-b16x2")).min_resize == 256
    assert (data.num_frames, data.crop_size, data.spec_shape) == (8, (32, 32), (100, 32))
    assert (data.front_end.name, data.front_end.mean, data.front_end.std) == ("logmel", 1.102, 2.762)

    videos = [write_media(tmp_path / f"clip{i}.mp4", duration=2.0, size=(40, 48), fps=25,
                          audio_fn=tone_schedule([440.0 * (i + 1)], amplitude=0.3)) for i in range(2)]
    assert main(["predict", str(out_dir), *map(str, videos), "--top-k", "2", "--quiet",
                 "--output", str(tmp_path / "p.json")]) == 0
    preds = json.loads((tmp_path / "p.json").read_text())
    assert [p["streams"] for p in preds] == [["audio", "video"]] * 2
    assert all(len(p["top"]) == 2 and 0 <= p["top"][0]["score"] <= 1 for p in preds)

    n = model.config.num_classes
    (tmp_path / "labels.txt").write_text("\n".join(f"class_{k}" for k in range(n)) + "\n")
    (tmp_path / "eval.csv").write_text("path,label\nclip0.mp4,class_0\nclip1.mp4,class_1\n")
    assert main(["eval", str(out_dir), str(tmp_path / "eval.csv"), "--labels", str(tmp_path / "labels.txt"),
                 "--output", str(tmp_path / "eval"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_videos"] == 2 and metrics["num_skipped"] == 0 and metrics["clips_per_video"] == 4


def write_msgpack(path, tree):
    """A second writer of Flax's msgpack format: arrays as ExtType 1 of [shape, dtype name, bytes]."""

    def default(obj):
        if isinstance(obj, np.ndarray):
            return msgpack.ExtType(1, msgpack.packb([list(obj.shape), obj.dtype.name, obj.tobytes()]))
        raise TypeError(type(obj))

    path.write_bytes(msgpack.packb(tree, default=default, use_bin_type=True))


def test_bfloat16_and_chunked_arrays_are_read(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 0.0], np.float32)
    bf16_bytes = (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()  # exact: values fit bfloat16
    ext = msgpack.ExtType(1, msgpack.packb([[4], "bfloat16", bf16_bytes]))
    chunked = {"__msgpack_chunked_array__": True, "shape": {"0": 2, "1": 3},
               "chunks": {"0": np.arange(4, dtype=np.float32), "1": np.arange(4, 6, dtype=np.float32)}}
    write_msgpack(tmp_path / "c", {"params": {"a": ext, "b": chunked}})
    tree = read_flax_checkpoint(tmp_path / "c")
    np.testing.assert_array_equal(tree["params"]["a"], values)
    np.testing.assert_array_equal(tree["params"]["b"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_a_written_checkpoint_of_a_random_model_converts_back(tmp_path):
    """A random model -> Flax tree -> msgpack file (second writer) -> `mbt convert` -> the same outputs."""
    config = MBTConfig(fusion_layer=1, hidden_size=32, num_heads=4, num_layers=3, mlp_dim=64, num_classes=4,
                       rgb_patch_size=(2, 8, 8), num_frames=4, image_size=(16, 24), spectrogram_patch_size=(8, 4),
                       spectrogram_shape=(40, 16), representation_size=12, spectrogram_channels=3)
    model = randomize_(MBT(config)).eval()
    flat = state_dict_to_scenic(model.state_dict(), config)
    tree: dict = {}
    for k, v in flat.items():
        node = tree
        *parents, leaf = k.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    write_msgpack(tmp_path / "checkpoint_7", {"optimizer": {"target": tree, "state": {"step": np.array(7, np.int32)}}})
    rc = main(["convert", str(tmp_path), str(tmp_path / "out"), "--fusion-layer", "1", "--num-frames", "4",
               "--image-size", "16x24", "--spectrogram-shape", "40x16"])
    assert rc == 0
    converted = MBT.from_pretrained(tmp_path / "out")
    assert converted.config == config.replace(stochastic_droplayer_rate=0.0)
    x = random_inputs(config)
    with torch.no_grad():
        torch.testing.assert_close(converted(x).logits, model(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["truncated", "text", "random", "empty", "not_mbt", "vit", "missing", "list",
                                  "orbax_dir"])
def test_bad_checkpoints_give_one_line_errors(kind, tmp_path):
    path = tmp_path / "checkpoint_1"
    good = (fixture_dir() / "checkpoint_a" / "checkpoint_1").read_bytes()
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_mbt":
        write_msgpack(path, {"params": {"conv1": {"kernel": np.zeros((3, 3, 1, 4), np.float32)}}})
    elif kind == "vit":
        write_msgpack(path, {"params": {"embedding": {"kernel": np.zeros((16, 16, 3, 8), np.float32)},
                                        "head": {"kernel": np.zeros((8, 10), np.float32)}}})
    elif kind == "list":
        path.write_bytes(msgpack.packb([1, 2, 3]))
    elif kind == "orbax_dir":  # an Orbax checkpoint is a folder named checkpoint_<step>
        (path / "default").mkdir(parents=True)
    result = subprocess.run([sys.executable, "-m", "mbt.cli", "convert", str(path), str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mbt convert: error: ") and str(path) in lines[0], lines
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_output_folder_that_is_a_file_gives_a_one_line_error(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    rc = main(["convert", str(fixture_dir() / "checkpoint_f_legacy" / "checkpoint_1"), str(tmp_path / "taken"),
               "--spectrogram-shape", "100x32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "taken: exists and is not a folder" in err[0]


# ------------------------------------------------------------------------------------------- model directories
def test_save_and_load_pretrained_roundtrip(tmp_path):
    config = MBTConfig(modality_fusion=("rgb", "spectrogram"), use_bottleneck=False, share_encoder=True,
                       fusion_layer=1, hidden_size=32, num_heads=4, num_layers=2, mlp_dim=64, num_classes=3,
                       rgb_patch_size=(2, 8, 8), num_frames=4, image_size=(16, 16), spectrogram_patch_size=(8, 8),
                       spectrogram_shape=(32, 16), classifier="gap")
    model = randomize_(MBT(config)).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = MBT.from_pretrained(tmp_path / "m")
    assert loaded.config == config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert not list((tmp_path / "m").glob("*.tmp")), "temporary files are renamed into place"


def test_from_pretrained_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        MBT.from_pretrained(tmp_path / "nope")
    config = MBTConfig(modality_fusion=("rgb",), hidden_size=32, num_heads=4, num_layers=2, mlp_dim=64,
                       num_classes=3, rgb_patch_size=(2, 8, 8), num_frames=4, image_size=(16, 16), fusion_layer=0)
    MBT(config).save_pretrained(tmp_path / "m")
    other = config.replace(num_classes=4).to_dict()
    (tmp_path / "m" / "config.json").write_text(json.dumps(other))
    with pytest.raises(CheckpointError, match=r"model.safetensors does not fit.*output_projection.weight: file "
                                              r"\(3, 32\) vs model \(4, 32\)"):
        MBT.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config.to_dict()))
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        MBT.from_pretrained(tmp_path / "m")
