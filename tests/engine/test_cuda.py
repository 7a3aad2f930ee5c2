"""The CUDA paths: the model on a GPU against the Scenic fixtures, bf16 autocast against fp32, and training,
resuming and scoring on a GPU. They run only where a CUDA GPU is (CI has none; they are skipped there), e.g.

    MBT_FIXTURES=../shared/fixtures/scenic_mbt pytest tests/engine/test_cuda.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mbt import MBT
from mbt.data import DataConfig
from mbt.data.annotations import read_annotations
from mbt.data.datasets import VideoDataset
from mbt.engine.checkpoint import list_checkpoints, load_checkpoint
from mbt.engine.config import RunConfig
from mbt.engine.evaluate import predict_conditions
from mbt.engine.trainer import _autocast, train
from tests.conftest import FIXTURE_NAMES
from tests.models.test_scenic_parity import build, max_diff

from .conftest import write_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ATOL_F32_GPU = 1e-5  # as on the CPU (an H200 gave at most 2.1e-6 on the tokens, 1.4e-6 on the logits)
ATOL_F64_GPU = 1e-9


@pytest.fixture
def exact_fp32(monkeypatch):
    """fp32 without TF32 (cuDNN's convolutions use TF32 by default: 10-bit mantissas in the tokenizers)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def _to(inputs: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixtures_on_the_gpu_match_scenic(name, load_fixture, exact_fp32):
    fx = load_fixture(name)
    model = build(fx).cuda()
    with torch.no_grad():
        out = model(_to(fx.inputs(), "cuda"))
    assert out.logits.device.type == "cuda"
    d32 = max_diff(out.logits.cpu(), fx["output/logits"]), max_diff(out.tokens.cpu(), fx["output/preclassifier"])
    with torch.no_grad():
        out64 = model.double()(_to(fx.inputs(torch.float64), "cuda"))
    d64 = max_diff(out64.logits.cpu(), fx["output_f64/logits"])
    print(f"{name}: fp32 logits {d32[0]:.2g}, tokens {d32[1]:.2g}; fp64 logits {d64:.2g} from Scenic's")
    assert max(d32) <= ATOL_F32_GPU and d64 <= ATOL_F64_GPU


@pytest.mark.parametrize("name", ["a_bottleneck_token", "b_bottleneck_gap", "c_vanilla_early_separate"])
def test_bf16_autocast_stays_close_to_fp32(name, load_fixture, exact_fp32):
    """The trainer's autocast ('auto' on a GPU with bf16): the logits within bf16's precision of fp32's, and
    the gradients pointing the same way."""
    fx = load_fixture(name)
    model = build(fx).cuda().train()
    inputs = _to(fx.inputs(), "cuda")
    autocast = _autocast(torch.device("cuda"), "auto")
    assert autocast is not None  # an H100/H200/A100 has bf16

    def run(ctx):
        model.zero_grad()
        torch.manual_seed(0)
        with ctx:
            logits = model.eval()(inputs).logits
        logits.float().square().mean().backward()
        return logits.float().detach(), torch.cat([p.grad.flatten() for p in model.parameters()
                                                   if p.grad is not None])

    ref_logits, ref_grad = run(torch.autocast("cuda", enabled=False))
    logits, grad = run(autocast)
    rel = (logits - ref_logits).norm() / ref_logits.norm()
    cos = torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0)
    print(f"{name}: bf16 logits {rel:.2g} from fp32's (relative), gradient cosine {cos:.4f}")
    assert rel < 2e-2, rel  # bf16 keeps 8 bits of mantissa: ~0.4% per rounding
    assert cos > 0.98, cos


def test_train_resume_and_score_on_the_gpu(clip_dirs, tmp_path):
    """A run on the GPU (bf16 autocast, stochastic depth) learns; a run resumed from its middle checkpoint (the CUDA
    random state included) ends where the uninterrupted one does; its model scores the same on the GPU and the
    CPU."""
    def config(out):
        return RunConfig.from_yaml(write_config(
            tmp_path / f"{out}.yaml", clip_dirs["train"], tmp_path / out,
            model={"stochastic_droplayer_rate": 0.2},
            optim={"epochs": 8}, train={"device": "cuda", "precision": "auto", "checkpoint_every_steps": 4,
                                       "keep_checkpoints": 10}))

    whole = train(config("whole"))
    checkpoints = list_checkpoints(tmp_path / "whole")
    assert len(checkpoints) == 6  # 24 steps, one every 4
    first = load_checkpoint(checkpoints[0])
    assert len(first["rng"]["cuda"]) == torch.cuda.device_count()
    losses = [float(line.split(",")[2]) for line in (tmp_path / "whole" / "train_log.csv").read_text().splitlines()[1:]]
    assert np.mean(losses[-3:]) < 0.6 * losses[0], losses  # it learns (ln 3 at the start)

    part = config("part")
    train(part)
    for ckpt in list_checkpoints(tmp_path / "part"):
        if load_checkpoint(ckpt)["step"] > 12:
            ckpt.unlink()
    for f in (tmp_path / "part" / "model").iterdir():
        f.unlink()
    train(part, resume=True)
    w = load_file(whole / "model.safetensors")
    r = load_file(tmp_path / "part" / "model" / "model.safetensors")
    start = {k: v.float().cpu() for k, v in first["model"].items() if k in w}
    moved = sum((w[k].float() - start[k]).square().sum().item() for k in start) ** 0.5
    gap = sum((w[k].float() - r[k].float()).square().sum().item() for k in w) ** 0.5
    print(f"resumed run's distance from the whole run: {gap:.3g} (the weights moved {moved:.3g} after step 4)")
    assert gap <= 1e-2 * moved, (gap, moved)  # a lost random state or data position moves it by O(moved)

    # scoring the trained model on the GPU and the CPU (fp32)
    model = MBT.from_pretrained(whole).eval()
    data_config = DataConfig.from_pretrained(whole)
    ann = read_annotations(clip_dirs["test"], labels=list(model.config.label_names))
    data = VideoDataset(ann, data_config, split="test", on_error="raise")
    full = tuple(model.config.modality_fusion)
    cpu, labels, _, _ = predict_conditions(model, data, torch.device("cpu"), [full], batch_size=4, progress=False)
    torch.backends.cudnn.allow_tf32 = False
    try:
        gpu = predict_conditions(model.cuda(), data, torch.device("cuda"), [full], batch_size=4, progress=False)[0]
    finally:
        torch.backends.cudnn.allow_tf32 = True
    assert gpu[full].device.type == "cpu"  # the scores come back to the host
    print(f"GPU and CPU logits of the trained model differ by {(gpu[full] - cpu[full]).abs().max():.2g}")
    np.testing.assert_allclose(gpu[full].numpy(), cpu[full].numpy(), atol=1e-4)
    assert (cpu[full].argmax(1) == labels.argmax(1)).float().mean() > 0.6  # chance is 1/3
