"""Training and evaluation end to end, on generated clips and a tiny MBT: the CLI, torchrun with 2 processes,
gradient accumulation, SIGKILL + resume, skipped files, evaluation outputs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mbt import MBT, ConfigError
from mbt.data import DataConfig
from mbt.engine.checkpoint import list_checkpoints, load_checkpoint
from mbt.engine.config import RunConfig
from mbt.engine.trainer import train

from .conftest import write_config

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=ENV)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _log(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_train_then_eval_through_the_cli(clip_dirs, tmp_path):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "run.yaml", clip_dirs["train"], out, val_csv=clip_dirs["test"],
                       train={"eval_every_epochs": 3})
    _run(["-m", "mbt", "train", str(cfg), "--optim.epochs", "8"])
    _run(["-m", "mbt", "eval", str(out / "model"), str(clip_dirs["test"]), "--output", str(tmp_path / "eval"),
          "--no-progress"])

    rows = _log(out / "train_log.csv")
    losses = [float(r["loss"]) for r in rows]
    assert len(rows) == 24 and rows[-1]["step"] == "24"
    assert losses[0] == pytest.approx(torch.log(torch.tensor(3.0)).item(), abs=1e-4)  # zero head: ln(3)
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses  # the training loss falls
    assert {r["split"] for r in _log(out / "eval_log.csv")} == {"val"}
    for name in ("config.yaml", "model/config.json", "model/model.safetensors", "model/preprocessor_config.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in list_checkpoints(out)] == ["step-00000016.pt", "step-00000020.pt", "step-00000024.pt"]
    # The run dir's config.yaml is the resolved config: it loads and names the classes.
    resolved = RunConfig.from_yaml(out / "config.yaml")
    assert resolved.model["label_names"] == ["red_low", "green_mid", "blue_high"]

    model = MBT.from_pretrained(out / "model")
    assert model.config.problem_type == "single_label" and model.config.num_classes == 3
    DataConfig.from_pretrained(out / "model").check_model(model.config)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_videos"] == 9 and metrics["clips_per_video"] == 2 and metrics["num_skipped"] == 0
    assert metrics["top1"] > 0.6  # chance is 1/3
    with (tmp_path / "eval" / "per_class.csv").open() as f:
        per_class = list(csv.DictReader(f))
    assert [r["name"] for r in per_class] == ["red_low", "green_mid", "blue_high"]


def test_two_processes_equal_one_process_on_the_same_global_batch(clip_dirs, tmp_path):
    """torchrun, 2 gloo processes with 4 clips each per step == 1 process with 8 clips per step. SGD: Adam's
    normalisation amplifies the last-bit differences of a reordered gradient sum in near-zero gradients."""
    cfg = write_config(tmp_path / "run.yaml", clip_dirs["train"], tmp_path / "unused",
                       optim={"name": "sgd", "lr": 0.5, "epochs": 3},
                       data={"augment": {"flip": True, "mixup_alpha": 0.0}})
    for n in (1, 2):
        _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
              "-m", "mbt", "train", str(cfg), "--train.output_dir", str(tmp_path / f"p{n}")])
    one, two = _weights(tmp_path / "p1"), _weights(tmp_path / "p2")
    assert _max_diff(one, two) <= 1e-5
    assert _max_diff(one, {k: torch.zeros_like(v) for k, v in one.items() if True}) > 0.01  # it did train
    l1, l2 = _log(tmp_path / "p1" / "train_log.csv"), _log(tmp_path / "p2" / "train_log.csv")
    assert [float(r["loss"]) for r in l1] == pytest.approx([float(r["loss"]) for r in l2], abs=1e-5)


def test_gradient_accumulation_equals_the_full_batch(clip_dirs, tmp_path):
    cfg = write_config(tmp_path / "run.yaml", clip_dirs["train"], tmp_path / "unused",
                       optim={"name": "sgd", "lr": 0.5, "epochs": 2})
    runs = {}
    for accum in (1, 4):
        c = RunConfig.from_yaml(cfg, ["--optim.grad_accum_steps", str(accum),
                                      "--train.output_dir", str(tmp_path / f"a{accum}")])
        runs[accum] = load_file(train(c) / "model.safetensors")
    assert _max_diff(runs[1], runs[4]) <= 1e-5


def test_activation_checkpointing_gives_the_same_gradients():
    from mbt import MBTConfig

    from ..conftest import random_inputs, randomize_

    config = MBTConfig(hidden_size=32, num_layers=3, num_heads=2, mlp_dim=64, fusion_layer=1, num_frames=4,
                       image_size=(16, 16), rgb_patch_size=(2, 8, 8), spectrogram_shape=(32, 16),
                       num_classes=5, stochastic_droplayer_rate=0.5, dropout_rate=0.1)
    model = randomize_(MBT(config)).train()
    x = random_inputs(config)
    grads = []
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        model.zero_grad()
        torch.manual_seed(0)
        model(x).logits.square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert _max_diff(*grads) <= 1e-6
    assert max(g.abs().max().item() for g in grads[0].values()) > 0


def _slow_train_script(config: Path, extra: list[str]) -> list[str]:
    # The training under test, slowed to 0.4 s per step from outside the library so the test can kill it mid-run.
    code = ("import sys, time; import mbt.engine.trainer as t; step = t.Trainer.train_step\n"
            "def slow(*a, **k):\n    time.sleep(0.4); return step(*a, **k)\n"
            "t.Trainer.train_step = slow\nfrom mbt.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    return ["-c", code, "train", str(config), *extra]


def test_resume_after_sigkill_continues_exactly(clip_dirs, tmp_path):
    """Mixup, stochastic depth, scale jitter and flips all on: every random draw must be restored."""
    cfg = write_config(tmp_path / "run.yaml", clip_dirs["train"], tmp_path / "unused",
                       model={"stochastic_droplayer_rate": 0.2, "dropout_rate": 0.1},
                       optim={"epochs": 4, "name": "sgd", "lr": 0.3},
                       data={"augment": {"flip": True, "scale_jitter": [0.9, 1.33], "mixup_alpha": 0.5}},
                       train={"checkpoint_every_steps": 2, "keep_checkpoints": 2, "eval_every_epochs": 1},
                       val_csv=clip_dirs["test"], test_csv=clip_dirs["test"])
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run(["-m", "mbt", "train", str(cfg), "--train.output_dir", str(whole)])  # same threads as the resumed run

    proc = subprocess.Popen([sys.executable, *_slow_train_script(cfg, ["--train.output_dir", str(killed)])],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "step-00000004.pt").exists():  # mid-epoch 1 (3 steps per epoch)
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model").exists()  # it was killed before the end
    last = list_checkpoints(killed)[-1]
    state = load_checkpoint(last)
    assert state["data_position"]["step_in_epoch"] != 0 or state["step"] == 6

    with pytest.raises(ConfigError, match="pass --resume"):
        train(RunConfig.from_yaml(cfg, ["--train.output_dir", str(killed)]))
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's in \['optim.lr'\]"):
        train(RunConfig.from_yaml(cfg, ["--train.output_dir", str(killed), "--optim.lr", "0.1"]), resume=True)
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's in \['train.seed'\]"):
        train(RunConfig.from_yaml(cfg, ["--train.output_dir", str(killed), "--train.seed", "5"]), resume=True)
    leftover = killed / "checkpoints" / ".step-00000006.pt.abc.tmp"  # as a kill inside torch.save leaves it
    leftover.write_bytes(b"\0" * 100)
    _run(["-m", "mbt", "train", str(cfg), "--train.output_dir", str(killed), "--resume"])
    assert not leftover.exists()

    a, b = _weights(whole), _weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a), _max_diff(a, b)
    # The logs hold each step once, with the uninterrupted run's values.
    la, lb = _log(whole / "train_log.csv"), _log(killed / "train_log.csv")
    assert [r["step"] for r in lb] == [str(s) for s in range(1, 13)]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    ea, eb = _log(whole / "eval_log.csv"), _log(killed / "eval_log.csv")
    assert [(r["step"], r["split"]) for r in eb] == [("3", "val"), ("6", "val"), ("9", "val"), ("12", "val"),
                                                     ("12", "test")]
    assert ea == eb
    # TensorBoard: every step once, none lost or doubled by the resume.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(killed / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 13))
    assert [e.step for e in events.Scalars("val/loss")] == [3, 6, 9, 12]
    # Resuming the finished run redoes only the export and the test, and keeps one test row.
    _run(["-m", "mbt", "train", str(cfg), "--train.output_dir", str(killed), "--resume"])
    assert _log(killed / "eval_log.csv") == eb
    assert oct((killed / "model" / "model.safetensors").stat().st_mode & 0o777) != oct(0o600)


def test_resume_needs_a_checkpoint(clip_dirs, tmp_path):
    cfg = write_config(tmp_path / "run.yaml", clip_dirs["train"], tmp_path / "none")
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(RunConfig.from_yaml(cfg), resume=True)


def test_unreadable_clips_are_skipped_and_reported(clip_dirs, tmp_path):
    folder = clip_dirs["train"].parent
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    rows = clip_dirs["train"].read_text().splitlines()
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("\n".join(rows[:1] + [f"{bad},red_low"] + [f"{folder / r}" for r in rows[1:]]) + "\n")
    (tmp_path / "labels.txt").write_text((folder / "labels.txt").read_text())
    cfg = write_config(tmp_path / "run.yaml", csv_path, tmp_path / "run", optim={"epochs": 2, "batch_size": 5})
    model_dir = train(RunConfig.from_yaml(cfg))
    assert (model_dir / "model.safetensors").is_file()
    log = _log(tmp_path / "run" / "train_log.csv")
    assert sum(int(r["skipped"]) for r in log) == 2  # the bad file, once per epoch


def test_train_starts_from_imagenet_vit_weights(clip_dirs, tmp_path):
    """init.checkpoint: a timm ViT (safetensors) matching the tiny model. The first update has lr 0 (warm-up from
    step 0, as Scenic), so after one step the exported model still holds the ViT's blocks in both streams."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    D, L, M, P = 32, 2, 64, 8
    vit = {"cls_token": torch.randn(1, 1, D, generator=g), "pos_embed": torch.randn(1, 5, D, generator=g),
           "patch_embed.proj.weight": torch.randn(D, 3, P, P, generator=g), "patch_embed.proj.bias": torch.randn(D),
           "norm.weight": torch.randn(D, generator=g), "norm.bias": torch.randn(D, generator=g)}
    for i in range(L):
        for name, shape in (("norm1", (D,)), ("norm2", (D,))):
            vit[f"blocks.{i}.{name}.weight"] = torch.randn(shape, generator=g)
            vit[f"blocks.{i}.{name}.bias"] = torch.randn(shape, generator=g)
        for name, (o, i_) in (("attn.qkv", (3 * D, D)), ("attn.proj", (D, D)), ("mlp.fc1", (M, D)),
                              ("mlp.fc2", (D, M))):
            vit[f"blocks.{i}.{name}.weight"] = torch.randn(o, i_, generator=g) * 0.1
            vit[f"blocks.{i}.{name}.bias"] = torch.randn(o, generator=g) * 0.1
    save_file(vit, tmp_path / "vit.safetensors")
    cfg = write_config(tmp_path / "run.yaml", clip_dirs["train"], tmp_path / "run",
                       model={"spectrogram_patch_size": [8, 8]},
                       init={"checkpoint": str(tmp_path / "vit.safetensors")},
                       optim={"max_steps": 1, "warmup_epochs": 0.34})
    weights = load_file(train(RunConfig.from_yaml(cfg)) / "model.safetensors")
    for m in ("rgb", "spectrogram"):
        for i in range(L):
            assert torch.equal(weights[f"encoders.{m}.{i}.attn.qkv.weight"], vit[f"blocks.{i}.attn.qkv.weight"])
            assert torch.equal(weights[f"encoders.{m}.{i}.mlp.fc2.bias"], vit[f"blocks.{i}.mlp.fc2.bias"])
    assert torch.equal(weights["encoder_norm.weight"], vit["norm.weight"])
    assert torch.equal(weights["tokenizers.rgb.cls"], vit["cls_token"])
    central = weights["tokenizers.rgb.patch_embed.proj.weight"]  # (D, 3, 2, 8, 8): the ViT kernel at t = 1
    assert torch.equal(central[:, :, 1], vit["patch_embed.proj.weight"]) and not central[:, :, 0].any()
    # model.spectrogram_channels is not set: the model takes the ViT's 3 channels, so its spectrogram kernel is the
    # ViT's own and trains as Scenic's (the 1-channel log-mel input is broadcast to the 3)
    assert torch.equal(weights["tokenizers.spectrogram.patch_embed.proj.weight"], vit["patch_embed.proj.weight"])


def test_fusion_model_from_two_unimodal_models_with_init_from(clip_dirs, tmp_path, capsys):
    """`mbt train --init-from VIDEO_DIR AUDIO_DIR`: each stream starts from its single-modality model (the first
    step has lr 0, so the saved model still holds them bit for bit), the spectrogram channel count follows the
    audio model's (1), the report names what came from where, and a differing data field is named."""
    from mbt import MBTConfig, cli
    from mbt.data import DataConfig

    from .conftest import TINY_DATA, TINY_MODEL

    sources = {}
    for seed, (name, m) in enumerate((("video", "rgb"), ("audio", "spectrogram"))):
        torch.manual_seed(seed)
        model = MBT(MBTConfig(**{**TINY_MODEL, "modality_fusion": [m], "fusion_layer": 0, "num_classes": 3,
                                 "spectrogram_channels": 1}))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)  # class tokens and positions start at zero: make them visible
        data = DataConfig.from_dict({**TINY_DATA, "modalities": [m], "num_frames": 4, "crop_size": [16, 16],
                                     "spec_frames": 96, "front_end": {**TINY_DATA["front_end"], "mean": -5.0}})
        model.save_pretrained(tmp_path / name, data_config=data)
        sources[m] = model.state_dict()
    cfg = write_config(tmp_path / "run.yaml", clip_dirs["train"], tmp_path / "run",
                       optim={"max_steps": 1, "warmup_epochs": 0.34})
    assert cli.main(["train", str(cfg), "--init-from", str(tmp_path / "video"), str(tmp_path / "audio")]) == 0
    out = capsys.readouterr().out
    weights = _weights(tmp_path / "run")
    for m, state in sources.items():
        for k, v in state.items():
            if k.startswith((f"tokenizers.{m}.", f"encoders.{m}.")):
                assert torch.equal(weights[k], v), k
    assert torch.equal(weights["encoder_norm.weight"], sources["spectrogram"]["encoder_norm.weight"])
    assert weights["tokenizers.spectrogram.patch_embed.proj.weight"].shape[1] == 1
    assert f"rgb stream (tokenizer, 2 blocks): {tmp_path / 'video'}" in out
    assert "left as initialised: bottleneck, output_projection.weight, output_projection.bias" in out
    assert "data.front_end.mean: source -5.0, this run -6.0" in out
    resolved = RunConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert resolved.init.rgb == str(tmp_path / "video") and resolved.model["spectrogram_channels"] == 1

    # a multimodal directory must say which stream; a stream the model lacks is refused before anything runs
    MBT(MBTConfig(**{**TINY_MODEL, "num_classes": 3})).save_pretrained(tmp_path / "fusion")
    assert cli.main(["train", str(cfg), "--init-from", str(tmp_path / "fusion")]) == 1
    assert "name the stream to take from it: rgb=PATH or spectrogram=PATH" in capsys.readouterr().err
    video_only = write_config(tmp_path / "v.yaml", clip_dirs["train"], tmp_path / "v",
                              model={"modality_fusion": ["rgb"]}, data={"modalities": ["rgb"]})
    assert cli.main(["train", str(video_only), "--init-from", str(tmp_path / "audio")]) == 1
    assert "init.spectrogram is set, but the model's modalities are ['rgb']" in capsys.readouterr().err


def test_epic_kitchens_two_heads_train_and_score(tmp_path):
    """EPIC-format annotations: verb (97) + noun (300) heads, a softmax each; verb/noun/action metrics."""
    import numpy as np

    from mbt.data.synthetic import tone_schedule, write_media

    videos = tmp_path / "videos"
    (videos / "P01").mkdir(parents=True)
    colours = [(220, 40, 40), (40, 200, 60), (50, 60, 230)]
    frame = lambda i, t, size: np.full((*size, 3), colours[min(int(t // 2), 2)], np.uint8)  # noqa: E731
    write_media(videos / "P01" / "P01_01.mp4", duration=6.0, size=(24, 32), frame_fn=frame,
                audio_fn=tone_schedule([300.0, 1200.0, 3000.0], segment=2.0))
    header = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
              "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")
    rows = []
    for j in range(12):
        seg = j % 3
        start = 2 * seg + 0.1 * (j // 3)
        rows.append(f"P01_01_{j},P01,P01_01,00:00:00.0,00:00:{start:05.2f},00:00:{start + 1.5:05.2f},0,0,x,v,"
                    f"{seg},n,{10 + seg},[],[]")
    (tmp_path / "EPIC_100_train.csv").write_text(header + "\n".join(rows) + "\n")
    split = {"annotations": str(tmp_path / "EPIC_100_train.csv"), "format": "epic", "video_dir": str(videos)}
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "EPIC_100_train.csv", tmp_path / "run",
                       dataset={"train": split, "test": split}, data={"num_test_clips": 1},
                       optim={"epochs": 4, "batch_size": 4, "label_smoothing": 0.2})
    model_dir = train(RunConfig.from_yaml(cfg))
    model = MBT.from_pretrained(model_dir)
    assert model.config.problem_type == "multi_head" and model.config.heads == {"verb": 97, "noun": 300}
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    for key in ("verb_top1", "verb_top5", "noun_top1", "noun_top5", "action_top1", "action_top5"):
        assert 0.0 <= metrics[key] <= 1.0, key
    losses = [float(r["loss"]) for r in _log(tmp_path / "run" / "train_log.csv")]
    # Zero head at the start: the mean over heads of ln(97) and ln(300), smoothing included (uniform logits).
    assert losses[0] == pytest.approx((np.log(97) + np.log(300)) / 2, abs=1e-4)
    assert losses[-1] < losses[0]


def test_multi_label_csv_trains_with_sigmoid_loss(clip_dirs, tmp_path):
    folder = clip_dirs["train"].parent
    rows = clip_dirs["train"].read_text().splitlines()[1:]
    # Every clip also carries a shared tag: several labels in one field make the task multi-label.
    csv_path = tmp_path / "ml.csv"
    csv_path.write_text("\n".join(f"{folder / p},{lab};any" for p, lab in (r.split(",") for r in rows)) + "\n")
    (tmp_path / "labels.txt").write_text("any\nblue_high\ngreen_mid\nred_low\n")
    cfg = write_config(tmp_path / "run.yaml", csv_path, tmp_path / "run", optim={"epochs": 3}, test_csv=csv_path)
    model = MBT.from_pretrained(train(RunConfig.from_yaml(cfg)))
    assert model.config.problem_type == "multi_label" and model.config.num_classes == 4
    losses = [float(r["loss"]) for r in _log(tmp_path / "run" / "train_log.csv")]
    assert losses[0] == pytest.approx(4 * np.log(2), abs=1e-4)  # zero logits: ln 2 per class, summed
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["num_classes_scored"] == 4 and 0 <= metrics["mAP"] <= 1


def test_two_processes_survive_a_share_of_unreadable_clips(clip_dirs, tmp_path):
    """torchrun, 2 processes: in step 1, every clip of process 1 is unreadable (it still joins the gradient
    all-reduce). The model is rgb-only with bottleneck tokens, which it never uses (DDP must allow that)."""
    from mbt.engine.trainer import StepSampler

    folder = clip_dirs["train"].parent
    rows = clip_dirs["train"].read_text().splitlines()[1:17]  # 16 clips: 2 steps of 8 per epoch
    bad = set(StepSampler(16, 8, 2, rank=1, seed=0, epoch=0, start_step=0, steps_per_epoch=2).indices[:4])
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 100)
    lines = [f"{tmp_path / 'bad.mp4' if i in bad else folder / r.split(',')[0]},{r.split(',')[1]}"
             for i, r in enumerate(rows)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "labels.txt").write_text((folder / "labels.txt").read_text())
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "train.csv", tmp_path / "run",
                       model={"modality_fusion": ["rgb"]}, data={"modalities": ["rgb"]},
                       optim={"epochs": 2, "warmup_epochs": 0.5})
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "mbt", "train", str(cfg)])
    log = _log(tmp_path / "run" / "train_log.csv")
    skipped = [int(r["skipped"]) for r in log]
    assert skipped[0] == 4 and sum(skipped[:2]) == 4 and sum(skipped[2:]) == 4  # the 4 bad clips, each epoch
    assert MBT.from_pretrained(tmp_path / "run" / "model").config.modality_fusion == ("rgb",)


def test_trainer_steps_are_methods(clip_dirs, tmp_path, monkeypatch):
    """The Trainer's set-up sizes the run from the annotations alone before measuring anything (a warm-up longer
    than the run is refused before the spectrogram statistics are computed), and its steps can be driven one by
    one: a train_step on a batch lowers the loss on that batch, and save_model writes a loadable directory."""
    import mbt.engine.trainer as trainer_module
    from mbt.data import load_pretrained
    from mbt.data.datasets import VideoDataset, collate
    from mbt.engine.distributed import DistInfo
    from mbt.engine.trainer import Trainer

    def no_stats(*args, **kwargs):
        raise AssertionError("statistics measured before the run's length was checked")

    monkeypatch.setattr(trainer_module, "compute_stats", no_stats)
    long_warmup = write_config(tmp_path / "warm.yaml", clip_dirs["train"], tmp_path / "warm",
                               optim={"epochs": 1, "warmup_epochs": 2},
                               data={"front_end": {"num_mel_bins": 32, "mean": "auto", "std": "auto"}})
    with pytest.raises(ConfigError, match="warmup_epochs = 2.0 is 6 steps, but the run has 3 steps"):
        Trainer(RunConfig.from_yaml(long_warmup), DistInfo()).setup()

    cfg = RunConfig.from_yaml(write_config(tmp_path / "run.yaml", clip_dirs["train"], tmp_path / "run",
                                           optim={"lr": 1e-2, "warmup_epochs": 0}))
    t = Trainer(cfg, DistInfo())
    t.setup()
    assert (t.micro, t.steps_per_epoch, t.total, t.step) == (8, 3, 18, 0)
    data = VideoDataset(t.train_ann, t.data_config, split="val")
    batch = collate([data[i] for i in range(8)])
    losses = [t.train_step([batch])["loss"] for _ in range(5)]
    assert losses[-1] < losses[0]
    t.step = 5
    model_dir = t.save_model()
    model, data_config = load_pretrained(model_dir)
    assert data_config == t.data_config
    torch.testing.assert_close(model.state_dict(), t.model.state_dict())


def test_nan_audio_never_reaches_the_model(clip_dirs, tmp_path, capsys):
    """A float WAV with NaN samples among the training clips: `mbt stats` and training skip it by name (once per
    epoch), and the statistics and the trained weights are finite."""
    from mbt.cli import main

    from ..data.test_decode import nan_wav

    folder = clip_dirs["train"].parent
    bad = nan_wav(tmp_path / "nan.wav", nan_from=0.0, nan_to=1.0, duration=1.0)
    rows = clip_dirs["train"].read_text().splitlines()
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("\n".join(rows[:1] + [f"{bad},red_low"] + [f"{folder / r}" for r in rows[1:]]) + "\n")
    (tmp_path / "labels.txt").write_text((folder / "labels.txt").read_text())
    assert main(["stats", str(csv_path), "--num-mel-bins", "32", "--spec-frames", "96"]) == 0
    out = capsys.readouterr()
    mean, std = (float(x) for x in out.out.split()[1:4:2])
    assert np.isfinite([mean, std]).all() and "nan.wav" in out.err and "non-finite" in out.err
    cfg = write_config(tmp_path / "run.yaml", csv_path, tmp_path / "run", optim={"epochs": 2, "batch_size": 5})
    model_dir = train(RunConfig.from_yaml(cfg))
    state = load_file(model_dir / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in state.values())
    assert sum(int(r["skipped"]) for r in _log(tmp_path / "run" / "train_log.csv")) == 2
    assert "nan.wav" in capsys.readouterr().out
    skipped = _log(tmp_path / "run" / "skipped_train.csv")  # each epoch's skipped clips, on record
    assert [(r["epoch"], r["path"]) for r in skipped] == [("0", str(bad)), ("1", str(bad))]
    assert all("non-finite audio samples" in r["reason"] for r in skipped)


def test_non_finite_steps_are_skipped_then_stop_the_run(clip_dirs, tmp_path, monkeypatch, capsys):
    """A step whose loss is NaN changes no weight and names its clips; train.max_nonfinite_steps of them in a row
    end the run with one line, and no model directory or checkpoint holding NaN is ever written."""
    import mbt.engine.trainer as trainer_module
    from mbt.cli import main
    from mbt.data.datasets import VideoDataset, collate
    from mbt.engine.distributed import DistInfo
    from mbt.engine.trainer import Trainer
    from mbt.errors import NonFiniteError

    real_loss = trainer_module.mbt_loss
    monkeypatch.setattr(trainer_module, "mbt_loss", lambda *a, **k: real_loss(*a, **k) * float("nan"))
    cfg = write_config(tmp_path / "run.yaml", clip_dirs["train"], tmp_path / "run",
                       train={"max_nonfinite_steps": 3, "checkpoint_every_steps": 4})
    t = Trainer(RunConfig.from_yaml(cfg), DistInfo())
    t.setup()
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    batch = collate([VideoDataset(t.train_ann, t.data_config, split="val")[i] for i in range(4)])
    stats = t.train_step([batch])
    assert stats["nonfinite"] and len(stats["files"]) == 4
    torch.testing.assert_close(t.model.state_dict(), before, rtol=0, atol=0)

    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr()
    assert "3 non-finite training steps in a row (up to step 3" in err.err and err.err.count("\n") == 1
    assert "step 1: non-finite loss" in err.out and ".mp4" in err.out
    assert not (tmp_path / "run" / "model").exists() and not list_checkpoints(tmp_path / "run")

    nan_model = MBT(t.model_config)
    with torch.no_grad():
        nan_model.output_projection.bias[0] = float("nan")
    with pytest.raises(NonFiniteError, match="output_projection.bias"):
        nan_model.save_pretrained(tmp_path / "nan-model")
    assert not (tmp_path / "nan-model" / "model.safetensors").exists()


def test_damaged_checkpoint_is_refused_and_an_older_one_resumes(clip_dirs, tmp_path, capsys):
    """64 flipped bytes in the newest checkpoint: --resume fails in one line naming it and the intact older one;
    --resume-from that one finishes the run with the weights of an uninterrupted run, bit for bit."""
    from mbt.cli import main

    cfg = write_config(tmp_path / "run.yaml", clip_dirs["train"], tmp_path / "unused", optim={"epochs": 2},
                       train={"checkpoint_every_steps": 2, "keep_checkpoints": 3})
    assert main(["train", str(cfg), "--train.output_dir", str(tmp_path / "whole")]) == 0
    ckpts = list_checkpoints(tmp_path / "whole")
    assert [p.name for p in ckpts] == ["step-00000002.pt", "step-00000004.pt", "step-00000006.pt"]
    data = bytearray(ckpts[-1].read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 2: len(data) // 2 + 64])
    ckpts[-1].write_bytes(bytes(data))
    final = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    capsys.readouterr()
    whole_cfg = str(tmp_path / "whole" / "config.yaml")
    assert main(["train", whole_cfg, "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "step-00000006.pt: damaged (its SHA-256 does not match" in err
    assert f"--resume-from {ckpts[-2]}" in err
    assert main(["train", whole_cfg, "--resume-from", str(ckpts[-2])]) == 0
    assert (tmp_path / "whole" / "checkpoints" / "step-00000006.pt.superseded").is_file()
    again = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    assert all(torch.equal(final[k], again[k]) for k in final)


def test_a_pickle_that_would_run_code_is_refused_by_name(tmp_path, capsys):
    """A checkpoint whose pickle calls a function (with a valid checksum, so only the unpickler stops it) is
    refused naming the global it asked for; the function never runs."""
    import hashlib
    import io

    from mbt.engine.checkpoint import CHECKSUM_TAG, load_checkpoint
    from mbt.errors import CheckpointError

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo PWNED",))

    buffer = io.BytesIO()
    torch.save({"model": Payload()}, buffer)
    data = buffer.getvalue()
    path = tmp_path / "step-00000001.pt"
    path.write_bytes(data + CHECKSUM_TAG + hashlib.sha256(data).digest())
    with pytest.raises(CheckpointError, match=r"step-00000001.pt: refused: it would unpickle (posix|os)\.system"):
        load_checkpoint(path)
    assert "PWNED" not in capsys.readouterr().out


def test_modality_dropout_is_exact_across_resume_and_changes_training(clip_dirs, tmp_path):
    """data.augment.rgb_drop_prob / spectrogram_drop_prob: the draws depend only on the seed and the step, so a
    run resumed half-way ends with the uninterrupted run's weights bit for bit; and they do change training."""
    from mbt.cli import main

    drop = {"augment": {"scale_jitter": None, "color_augment_prob": 0.0, "color_drop_prob": 0.0,
                        "freq_mask_count": 0, "mixup_alpha": 0.5, "rgb_drop_prob": 0.3, "spectrogram_drop_prob": 0.3}}
    cfg = write_config(tmp_path / "run.yaml", clip_dirs["train"], tmp_path / "unused", optim={"epochs": 2},
                       data=drop, train={"checkpoint_every_steps": 3, "keep_checkpoints": 3})
    assert main(["train", str(cfg), "--train.output_dir", str(tmp_path / "whole")]) == 0
    whole = _weights(tmp_path / "whole")
    first = list_checkpoints(tmp_path / "whole")[0]
    assert first.name == "step-00000003.pt"
    assert main(["train", str(tmp_path / "whole" / "config.yaml"), "--resume-from", str(first)]) == 0
    resumed = _weights(tmp_path / "whole")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert main(["train", str(cfg), "--train.output_dir", str(tmp_path / "nodrop"),
                 "--data.augment.rgb_drop_prob", "0", "--data.augment.spectrogram_drop_prob", "0"]) == 0
    assert _max_diff(whole, _weights(tmp_path / "nodrop")) > 1e-4
