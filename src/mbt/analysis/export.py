"""Export an MBT model to ONNX for inference (onnxruntime, TensorRT, ...), with fixed modalities and shapes.

The exported graph is the model in eval mode (no dropout, no stochastic depth) for one set of modalities and one
batch size; every shape is fixed. Inputs and output, float32:

  rgb          (B, 3, T, H, W)   video frames, channels first, RGB, values in [-1, 1] (pixel * 2 / 255 - 1),
                                 T = num_frames sampled at the model's stride, H x W = image_size (central crop
                                 of frames whose shorter side was resized to min_resize). What mbt.data gives.
  spectrogram  (B, 1, time, mel) log-mel spectrogram, standardised: (log-mel - mean) / (std * std_multiplier)
                                 with the statistics of the model's preprocessor_config.json (front_end), so
                                 values are roughly zero-mean and unit-variance; time = frames (10 ms hop by
                                 default), mel = mel bins. One channel, as mbt.data gives; a model configured
                                 with more (converted Scenic checkpoints have 3 identical ones) copies it inside.
  logits       (B, num_classes)  raw scores. multi_label (AudioSet): sigmoid per class; single_label: softmax;
                                 multi_head (EPIC-KITCHENS): softmax over each head's slice (config.json `heads`).
                                 Class names: config.json `label_names`.

Only the modalities chosen at export time are inputs; a fusion model exported with one of them runs as
`MBT.forward` does with the other left out.

Exporter: torch.onnx.export with dynamo=True (torch.export, then ONNX Script), which needs the `onnx` and
`onnxscript` packages (`pip install -e ".[export]" in a clone`). The older TorchScript exporter (dynamo=False) also needs
`onnx`, and its tracer cannot run MBT's forward (it turns tensor sizes into tensors, and the batch-size check of
`MBT.forward` then fails), so it is not used.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..data.config import load_pretrained
from ..errors import ConfigError, DependencyError
from ..models.config import MBTConfig
from ..models.mbt import MBT

ONNX_OPSET = 18  # the dynamo exporter's own opset; others are converted from it
# Above this many bytes of weights, they go to a separate `<file>.data` (protobuf files are limited to 2 GiB).
EXTERNAL_DATA_BYTES = 1_800_000_000


class LogitsModel(nn.Module):
    """`model` as a function of positional tensors, one per modality in `modalities`, returning the logits only
    (what an ONNX graph can take and give)."""

    def __init__(self, model: MBT, modalities: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.modalities = tuple(modalities)

    def forward(self, *inputs: Tensor) -> Tensor:  # each (B, ...) -> (B, num_classes)
        return self.model(dict(zip(self.modalities, inputs))).logits


def input_shapes(config: MBTConfig, modalities: Sequence[str] | None = None,
                 batch_size: int = 1) -> dict[str, tuple[int, ...]]:
    """{input name: shape} of the exported graph, in input order (the model's modality order)."""
    shapes = {}
    for m in config.select_modalities(modalities):
        shape = config.input_shape(m)
        if m == "spectrogram":
            shape = (1, *shape[1:])  # one log-mel channel, broadcast inside to the configured channels
        shapes[m] = (batch_size, *shape)
    return shapes


def describe_io(config: MBTConfig, modalities: Sequence[str] | None = None, batch_size: int = 1,
                data_config: Any = None) -> str:
    """The inputs and the output of the exported graph, one line each, with value ranges; with `data_config` (an
    mbt.data.DataConfig, e.g. the model's preprocessor_config.json) also the preprocessing numbers."""
    lines = []
    for name, shape in input_shapes(config, modalities, batch_size).items():
        dims = "x".join(map(str, shape))
        if name == "rgb":
            text = (f"input  rgb          float32 {dims} (B, C, T, H, W): RGB frames, channels first, values in "
                    "[-1, 1] (pixel * 2 / 255 - 1)")
            if data_config is not None:
                text += (f"; {shape[2]} frames at stride {data_config.stride} of {data_config.fps:g} fps, central "
                         f"{shape[3]}x{shape[4]} crop after resizing the shorter side to {data_config.min_resize}")
        else:
            text = (f"input  spectrogram  float32 {dims} (B, 1, time, mel): standardised log-mel, "
                    "(log-mel - mean) / (std * std_multiplier), about zero-mean and unit-variance")
            if data_config is not None:
                fe = data_config.front_end
                text += (f"; front end {fe.name}, {fe.sample_rate} Hz, {fe.frame_shift_ms:g} ms hop, "
                         f"{fe.num_mel_bins} mel bins, mean {fe.mean:g}, std {fe.std:g} x {fe.std_multiplier:g}")
        lines.append(text)
    problem = {"multi_label": "apply a sigmoid per class", "single_label": "apply a softmax",
               "multi_head": "apply a softmax over each head's slice ("
                             + ", ".join(f"{k} {v}" for k, v in (config.heads or {}).items()) + ")"}
    hint = problem.get(config.problem_type or "", "problem type not recorded (config.problem_type)")
    names = "; class names in config.json label_names" if config.label_names else ""
    lines.append(f"output logits       float32 {batch_size}x{config.num_classes} (B, num_classes): raw scores, "
                 f"{hint}{names}")
    return "\n".join(lines)


def export_onnx(model_dir_or_model: str | Path | MBT, path: str | Path, modalities: Sequence[str] | None = None,
                batch_size: int = 1, opset: int = ONNX_OPSET, external_data: bool | None = None,
                check: bool = False) -> dict[str, Any]:
    """Export a model directory (or an MBT) to an ONNX file for inference, with fixed modalities and shapes.

    Args:
      model_dir_or_model: a model directory (config.json + model.safetensors) or an `MBT`.
      path: the .onnx file to write (its folder is created).
      modalities: the inputs of the graph (default: all of the model's), a subset of config.modality_fusion.
      batch_size: the fixed batch size B.
      opset: ONNX opset (default 18, the exporter's own).
      external_data: weights in a separate `<path>.data` file; default: only when they exceed 1.8 GB.
      check: run the file with onnxruntime (must be installed) on random inputs and compare with PyTorch.

    Graph inputs, named 'rgb' and/or 'spectrogram', and output 'logits' (all float32, shapes fixed):
      rgb          (B, 3, T, H, W)   frames in [-1, 1], channels first, RGB;
      spectrogram  (B, 1, time, mel) standardised log-mel (the model's front-end mean and std);
      logits       (B, num_classes)  raw scores (sigmoid for multi-label, softmax for single-label).
    See the module docstring and `describe_io` for details.

    Returns: {'path', 'inputs' ({name: shape}), 'output' (shape), 'opset', 'external_data', 'description'
      (describe_io's text), and with `check` 'max_abs_diff'}.
    """
    if isinstance(model_dir_or_model, MBT):
        model, data_config = model_dir_or_model, None
    else:  # the data config, when the directory has one, describes the preprocessing
        model, data_config = load_pretrained(model_dir_or_model, require_data_config=False)
    config = model.config
    present = config.select_modalities(modalities)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size = {batch_size!r}: must be an integer >= 1")
    shapes = input_shapes(config, present, batch_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = 4 * sum(p.numel() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise DependencyError(f"ONNX export needs the onnx and onnxscript packages ({e}); install them with "
                          "pip install -e \".[export]\" in a clone") from None

    was_training = model.training
    wrapper = LogitsModel(model, present).eval()
    g = torch.Generator().manual_seed(0)
    example = tuple(torch.randn(shape, generator=g).clamp_(-1, 1) for shape in shapes.values())
    # The exporter logs a warning for each torchvision op it cannot register; torchvision is not used here.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    old_level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # torch-internal deprecation noise
            torch.onnx.export(wrapper, example, str(path), dynamo=True, input_names=list(shapes),
                              output_names=["logits"], opset_version=opset, external_data=external_data,
                              verbose=False)
    finally:
        model.train(was_training)
        registration_log.setLevel(old_level)

    info: dict[str, Any] = {
        "path": str(path), "inputs": shapes, "output": (batch_size, config.num_classes), "opset": opset,
        "external_data": external_data,
        "description": describe_io(config, present, batch_size, data_config)}
    if check:
        info["max_abs_diff"] = check_onnx(path, wrapper, example)
    return info


def run_onnx(path: str | Path, inputs: dict[str, Any]) -> Any:
    """Run an exported file with onnxruntime (CPU): {name: array} -> logits (numpy)."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in inputs.items()}
    return session.run(["logits"], feed)[0]


def check_onnx(path: str | Path, wrapper: LogitsModel, example: Sequence[Tensor]) -> float:
    """Largest absolute difference between the ONNX file (onnxruntime) and PyTorch on `example`."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise DependencyError("checking the export needs onnxruntime: pip install onnxruntime") from None
    was_training = wrapper.model.training
    wrapper.model.eval()
    try:
        with torch.no_grad():
            ref = wrapper(*example).numpy()
    finally:
        wrapper.model.train(was_training)
    got = run_onnx(path, {m: x.numpy() for m, x in zip(wrapper.modalities, example)})
    return float(abs(got - ref).max()) if ref.size else 0.0


__all__ = ["ONNX_OPSET", "LogitsModel", "export_onnx", "describe_io", "input_shapes", "run_onnx", "check_onnx"]
