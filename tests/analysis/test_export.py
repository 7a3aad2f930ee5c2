"""`mbt.analysis.export` and `mbt export`: an exported ONNX file, run by onnxruntime, gives PyTorch's logits (within
1e-4) for bottleneck fusion, vanilla fusion, a single-modality model and a fusion model exported with one
modality; its inputs and output have the documented names and fixed shapes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mbt import MBT, MBTConfig
from mbt.analysis.export import export_onnx, run_onnx
from mbt.cli import main
from mbt.data import DataConfig
from tests.conftest import randomize_

TINY = MBTConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, fusion_layer=1, n_bottlenecks=2,
                 num_classes=5, num_frames=4, image_size=(16, 16), rgb_patch_size=(2, 8, 8),
                 spectrogram_shape=(32, 16), spectrogram_patch_size=(8, 8), stochastic_droplayer_rate=0.0,
                 dropout_rate=0.1, attention_dropout_rate=0.1)


def inputs_for(config: MBTConfig, modalities, batch: int, seed: int = 3) -> dict[str, torch.Tensor]:
    """rgb uniform in [-1, 1]; spectrogram standard normal with one channel (what mbt.data gives)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in modalities:
        shape = (batch, *config.input_shape(m))
        if m == "rgb":
            out[m] = torch.rand(shape, generator=g) * 2 - 1
        else:
            out[m] = torch.randn((batch, 1, *shape[2:]), generator=g)
    return out


@pytest.mark.parametrize("changes, modalities", [
    ({}, None),
    ({"use_bottleneck": False, "classifier": "gap", "fusion_layer": 0}, None),
    ({"modality_fusion": ("spectrogram",)}, None),
    ({"modality_fusion": ("rgb", "spectrogram"), "spectrogram_channels": 3}, ["spectrogram"]),
], ids=["bottleneck", "vanilla_gap", "spectrogram_only", "fusion_model_given_spectrogram_only"])
def test_onnxruntime_matches_pytorch(tmp_path, changes, modalities):
    config = TINY.replace(**changes)
    model = randomize_(MBT(config), seed=1).train()  # export must switch dropout off itself
    path = tmp_path / "model.onnx"
    info = export_onnx(model, path, modalities=modalities, batch_size=2)
    assert model.training  # the caller's mode is restored
    present = modalities or list(config.modality_fusion)
    x = inputs_for(config, present, batch=2)
    model.eval()
    with torch.no_grad():
        want = model(x).logits.numpy()
    got = run_onnx(path, {m: t.numpy() for m, t in x.items()})
    assert got.shape == want.shape == (2, config.num_classes) == info["output"]
    assert np.abs(want).max() > 0.1  # random weights: the logits are not trivially zero
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shapes = {i.name: tuple(i.shape) for i in session.get_inputs()}
    assert list(shapes) == present and shapes == info["inputs"]
    if "rgb" in shapes:
        assert shapes["rgb"] == (2, 3, config.num_frames, *config.image_size)
    if "spectrogram" in shapes:
        assert shapes["spectrogram"] == (2, 1, *config.spectrogram_shape)
    assert [(o.name, tuple(o.shape)) for o in session.get_outputs()] == [("logits", (2, config.num_classes))]


def test_export_rejects_unknown_modality(tmp_path):
    with pytest.raises(ValueError, match="give one or more"):
        export_onnx(MBT(TINY.replace(modality_fusion=("rgb",))), tmp_path / "m.onnx", modalities=["spectrogram"])


def test_export_command(tmp_path, capsys):
    """`mbt export` on a model directory with a preprocessor config: writes the file, prints its inputs, output
    and preprocessing, and --check compares onnxruntime with PyTorch."""
    config = TINY.replace(problem_type="multi_label")
    model = randomize_(MBT(config), seed=2)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir, data_config=DataConfig.for_model(config))
    onnx_path = tmp_path / "out" / "mbt.onnx"
    assert main(["export", str(model_dir), "--onnx", str(onnx_path), "--batch-size", "3", "--check"]) == 0
    out = capsys.readouterr().out
    assert onnx_path.is_file() and f"wrote {onnx_path}" in out
    assert "input  rgb          float32 3x3x4x16x16" in out and "[-1, 1]" in out
    assert "input  spectrogram  float32 3x1x32x16" in out and "standardised log-mel" in out
    assert "front end logmel, 16000 Hz" in out
    assert "output logits       float32 3x5" in out and "sigmoid" in out
    diff = float(out.split("max |difference| of the logits ")[1].split()[0])
    assert diff <= 1e-4
    x = inputs_for(config, ["spectrogram", "rgb"], batch=3)
    with torch.no_grad():
        want = MBT.from_pretrained(model_dir)(x).logits.numpy()
    np.testing.assert_allclose(run_onnx(onnx_path, {m: t.numpy() for m, t in x.items()}), want, atol=1e-4, rtol=0)
    assert main(["export", str(model_dir), "--onnx", str(tmp_path / "x.onnx"), "--modalities", "depth"]) == 1
    assert "give one or more" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "examples:\n  mbt export" in capsys.readouterr().out
