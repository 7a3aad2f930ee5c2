"""Losses (against torch's own functions and closed forms), the schedule (closed form) and run configs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from mbt import ConfigError, MBTConfig
from mbt.engine.config import RunConfig, parse_overrides
from mbt.engine.losses import mbt_loss, per_example_loss, smooth_labels
from mbt.engine.optim import lr_factor, make_optimizer, make_scheduler
from mbt.models.mbt import MBTOutput

from ..conftest import REPO


# ---------------------------------------------------------------------------------------------------- losses
def test_label_smoothing_matches_scenic_audioset_values():
    y = torch.zeros(1, 527)
    y[0, 3] = 1
    s = smooth_labels(y, 0.3)
    assert s[0, 3].item() == pytest.approx(0.70057, abs=1e-5)  # reference F.1
    assert s[0, 0].item() == pytest.approx(0.000569, abs=1e-6)


def test_sigmoid_loss_is_summed_over_classes_and_averaged_over_examples():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(5, 7, generator=g), (torch.rand(5, 7, generator=g) > 0.6).float()
    got = per_example_loss(logits, labels, "multi_label", label_smoothing=0.3).mean()
    want = F.binary_cross_entropy_with_logits(logits, labels * 0.7 + 0.3 / 7, reduction="sum") / 5
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_softmax_loss_matches_torch_label_smoothing():
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(6, 9, generator=g), torch.randint(0, 9, (6,), generator=g)
    got = per_example_loss(logits, F.one_hot(target, 9).float(), "single_label", label_smoothing=0.1).mean()
    assert got.item() == pytest.approx(F.cross_entropy(logits, target, label_smoothing=0.1).item(), rel=1e-6)


def test_multihead_loss_is_mean_of_per_head_softmax_losses_with_own_smoothing():
    g = torch.Generator().manual_seed(2)
    heads = {"verb": 4, "noun": 6}
    logits = torch.randn(3, 10, generator=g)
    verb, noun = torch.tensor([0, 3, 1]), torch.tensor([5, 0, 2])
    labels = torch.cat([F.one_hot(verb, 4), F.one_hot(noun, 6)], 1).float()
    got = per_example_loss(logits, labels, "multi_head", heads, label_smoothing=0.2)
    want = (F.cross_entropy(logits[:, :4], verb, label_smoothing=0.2, reduction="none")
            + F.cross_entropy(logits[:, 4:], noun, label_smoothing=0.2, reduction="none")) / 2
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="sum to"):
        per_example_loss(logits, labels, "multi_head", {"verb": 4, "noun": 5})


def test_token_head_trains_the_mean_of_per_modality_losses():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    labels = (torch.rand(4, 5, generator=g) > 0.5).float()
    out = MBTOutput(logits=(a + b) / 2, modality_logits={"rgb": a, "spectrogram": b}, pre_logits=None,
                    tokens=None, token_slices={})
    want = (per_example_loss(a, labels, "multi_label") + per_example_loss(b, labels, "multi_label")) / 2
    torch.testing.assert_close(mbt_loss(out, labels, "multi_label"), want)
    # Not the loss of the averaged logits (what evaluation uses).
    assert not torch.allclose(want, per_example_loss((a + b) / 2, labels, "multi_label"))
    torch.testing.assert_close(mbt_loss(out, labels, "multi_label", per_modality=False),
                               per_example_loss((a + b) / 2, labels, "multi_label"))


# ---------------------------------------------------------------------------------------------------- schedule
def test_schedule_is_scenic_warmup_times_cosine():
    W, T = 795, 15900  # AS-mini: 2.5 epochs of 318 steps, 50 epochs
    for s in (0, 1, 400, 795, 796, 5000, 15899, 15900, 20000):
        warm = min(1.0, s / W)
        want = warm * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0, s - W) / (T - W))))
        assert lr_factor(s, W, T) == pytest.approx(want, abs=1e-12)
    assert lr_factor(0, W, T) == 0.0 and lr_factor(W, W, T) == 1.0 and lr_factor(T, W, T) == pytest.approx(0.0)
    assert lr_factor(0, 0, 10) == 1.0  # no warm-up


def test_scheduler_drives_the_optimizer_lr():
    model = torch.nn.Linear(3, 2)
    opt = make_optimizer(model, "sgd", lr=0.5)
    sched = make_scheduler(opt, 3, 10)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.5 * lr_factor(s, 3, 10) for s in range(10)])


def test_weight_decay_skips_biases_norms_and_tokens():
    from mbt import MBT

    model = MBT(MBTConfig(hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, num_frames=2,
                          image_size=(16, 16), rgb_patch_size=(2, 8, 8), spectrogram_shape=(32, 16),
                          fusion_layer=0))
    opt = make_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05)
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "encoders.rgb.0.attn.qkv.weight" in names and "tokenizers.rgb.patch_embed.proj.weight" in names
    assert not any(n.endswith(("bias", "pos_embedding", "cls")) or "norm" in n or n == "bottleneck" for n in names)
    assert opt.param_groups[1]["weight_decay"] == 0.0


# ---------------------------------------------------------------------------------------------------- configs
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_shipped_configs_build():
    assert {p.stem for p in SHIPPED} >= {"audioset_mini", "vggsound", "epic_kitchens_100", "kinetics400"}
    for path in SHIPPED:
        cfg = RunConfig.from_yaml(path)
        mc = cfg.model_config(num_classes=397 if "epic" in path.stem else 10)
        cfg.data_config(mc)
        assert yaml.safe_load(path.read_text())["train"]["output_dir"] == cfg.train.output_dir


def test_audioset_config_is_the_official_recipe():
    cfg = RunConfig.from_yaml(REPO / "configs" / "audioset_mini.yaml")
    o = cfg.optim
    assert (o.name, o.lr, o.momentum, o.nesterov, o.weight_decay) == ("sgd", 0.5, 0.9, False, 0.0)
    assert (o.batch_size, o.epochs, o.warmup_epochs, o.max_grad_norm, o.label_smoothing) == (64, 50, 2.5, 1.0, 0.3)
    mc = cfg.model_config(num_classes=527)
    assert (mc.fusion_layer, mc.n_bottlenecks, mc.stochastic_droplayer_rate, mc.classifier) == (8, 4, 0.3, "token")
    dc = cfg.data_config(mc)
    assert (dc.num_frames, dc.stride, dc.augment.mixup_alpha, dc.augment.freq_mask_count) == (32, 2, 0.5, 1)
    assert dc.num_test_clips == 4 and cfg.init.kernel_init == "central_frame"


def test_overrides(tmp_path):
    assert parse_overrides(["--optim.lr", "0.1", "--model.fusion_layer=4", "--dataset.val", "null",
                            "--data.crop_size", "[32, 32]"]) == [
        ("optim.lr", 0.1), ("model.fusion_layer", 4), ("dataset.val", None), ("data.crop_size", [32, 32])]
    path = REPO / "configs" / "audioset_mini.yaml"
    cfg = RunConfig.from_yaml(path, ["--optim.lr", "5e-4", "--model.fusion_layer=4", "--dataset.val", "null",
                                     "--train.output_dir", str(tmp_path)])
    assert cfg.optim.lr == 5e-4 and cfg.model["fusion_layer"] == 4 and cfg.dataset.val is None
    assert cfg.train.output_dir == str(tmp_path)
    with pytest.raises(ConfigError, match=r"optim: unknown field\(s\) \['lrr'\]"):
        RunConfig.from_yaml(path, ["--optim.lrr", "0.1"])
    with pytest.raises(ConfigError, match="unknown section 'optimizer'"):
        RunConfig.from_yaml(path, ["--optimizer.lr", "0.1"])
    with pytest.raises(ConfigError, match="has no value"):
        RunConfig.from_yaml(path, ["--optim.lr"])
    with pytest.raises(ConfigError, match="unknown MBTConfig field"):
        RunConfig.from_yaml(path, ["--model.fusion", "4"]).model_config(num_classes=3)
    with pytest.raises(ConfigError, match="fusion_layer"):
        RunConfig.from_yaml(path, ["--model.fusion_layer", "99"]).model_config(num_classes=3)
    with pytest.raises(ConfigError, match="num_classes"):
        RunConfig.from_yaml(path, ["--model.num_classes", "5"]).model_config(num_classes=3)
    with pytest.raises(ConfigError, match="expected a number"):
        RunConfig.from_yaml(path, ["--optim.lr", "fast"])
    with pytest.raises(ConfigError, match="divisible"):
        RunConfig.from_yaml(path, ["--optim.grad_accum_steps", "3"])
    # Values of the wrong type name the field (a misspelt boolean must not become a truthy string).
    for override, message in ((["--optim.nesterov", "flase"], r"optim.nesterov = 'flase': expected true or false"),
                              (["--train.seed", "abc"], r"train.seed = 'abc': expected an integer"),
                              (["--optim.epochs", ".inf"], r"optim.epochs = inf: expected a finite number"),
                              (["--optim.betas", "0.9"], r"optim.betas = 0.9: expected a list of 2 numbers"),
                              (["--train.num_workers", "abc"], r"train.num_workers = 'abc': expected an integer")):
        with pytest.raises(ConfigError, match=message):
            RunConfig.from_yaml(path, override)
    with pytest.raises(ConfigError, match="set both mean and std to 'auto'"):
        _ = RunConfig.from_yaml(path, ["--data.front_end", "{mean: auto, std: 2.0}"]).auto_stats


def test_resolved_config_round_trips(tmp_path):
    cfg = RunConfig.from_yaml(REPO / "configs" / "epic_kitchens_100.yaml")
    cfg.to_yaml(tmp_path / "c.yaml")
    assert RunConfig.from_yaml(tmp_path / "c.yaml") == cfg


def test_run_config_errors_name_the_dotted_field(tmp_path):
    """A YAML file whose top level is not a mapping, or a value of the wrong type deep in `data` or `model`: one
    ConfigError naming the file and the dotted field, before anything is read or built."""
    from mbt.engine.config import RunConfig

    cases = {
        "- a\n- b\n": r"the top level must be a mapping of sections \['model', 'data'",
        "data: {front_end: {mean: abc, std: 2.0}}\n": r"data.front_end.mean = 'abc': expected a number",
        "data: {augment: {mixup_alpha: [1]}}\n": r"data.augment.mixup_alpha = \[1\]: expected a finite number",
        "model: {fusion_layer: two}\n": r"model.fusion_layer = 'two': expected an integer",
        "model: {image_size: [224, x]}\n": r"model.image_size = \[224, 'x'\]: expected a list of 2 integers",
        "data: [1, 2]\n": r"data: expected a mapping of fields",
    }
    for text, match in cases.items():
        path = tmp_path / "run.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=match):
            RunConfig.from_yaml(path)
    path.write_text("data: {front_end: {mean: auto, std: auto}, num_frames: 8}\nmodel: {image_size: 64}\n"
                    "optim: {lr: 5e-4}\n")
    cfg = RunConfig.from_yaml(path)  # 'auto', a square size and a number written as 5e-4 are fine
    assert cfg.auto_stats and cfg.optim.lr == 5e-4
    path.write_bytes(b"optim: {name: sgd}\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"run.yaml: not UTF-8 text"):
        RunConfig.from_yaml(path)
