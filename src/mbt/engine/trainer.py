"""`train(RunConfig)`: from a config to a trained, evaluated model directory, on one CPU or many GPUs (torchrun).

One optimiser step consumes `optim.batch_size` clips (the global batch): each of the W processes takes its share,
in `optim.grad_accum_steps` micro-batches. Which clips form step s of epoch e depends only on (seed, e, s), and every
random draw (augmentation, mixup, stochastic depth) is seeded from (seed, epoch/step, index or rank), so:

* a run resumed from a checkpoint continues exactly as if it had never stopped (`--resume`);
* W processes with per-process batch B / W compute the same update as one process with batch B (without mixup
  and stochastic depth, whose draws are per process, as Scenic's are per device).

The loss of a step is the sum of per-example losses over all valid clips of the step, divided by their number
(skipped, unreadable clips are left out, reported, never fatal). Gradient-norm clipping applies to the global
gradient after averaging (Scenic clips each device's gradient before averaging: reference H.9; with one device the
two agree).

Outputs in `train.output_dir`:
    config.yaml                 the resolved run config
    checkpoints/step-*.pt       resumable checkpoints (the last `train.keep_checkpoints`)
    train_log.csv, eval_log.csv step-wise training and evaluation logs
    tensorboard/                the same as TensorBoard events
    model/                      the final model directory (config.json, model.safetensors, preprocessor_config.json)
    eval/                       metrics.json and per_class.csv of the final multi-clip test (if dataset.test is set)
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler
from tqdm.auto import tqdm

from ..data.annotations import Annotations, detect_format, read_annotations
from ..data.datasets import SkipReport, VideoDataset, make_loader
from ..data.transforms import mixup
from ..models.config import ConfigError
from ..models.mbt import MBT
from . import distributed
from .checkpoint import (latest_checkpoint, load_checkpoint, remove_partial_files, rng_state, save_checkpoint,
                         set_rng_state)
from .config import RunConfig, SplitConfig
from .evaluate import evaluate_dataset, write_results
from .losses import mbt_loss
from .optim import make_optimizer, make_scheduler

MODEL_DIR = "model"
EVAL_DIR = "eval"
# Sections whose change makes a checkpoint a different run (train.* may change on resume: workers, logging, ...).
_RUN_SECTIONS = ("model", "data", "dataset", "init", "optim")


# ---------------------------------------------------------------------------------------------------- data
def read_split(split: SplitConfig, label_names: list[str] | None = None) -> Annotations:
    """Read one annotation file; `label_names` (the training classes) fixes the label space of VGGSound,
    Kinetics and CSV files that do not name their label list."""
    labels: Any = split.labels
    fmt = detect_format(split.annotations) if split.format == "auto" else split.format
    if labels is None and label_names is not None and fmt in ("vggsound", "kinetics", "csv"):
        labels = list(label_names)  # AudioSet and EPIC name their classes in their own class files
    ann = read_annotations(split.annotations, format=split.format, video_dir=split.video_dir, labels=labels,
                           split=split.split)
    if split.max_clips is not None:
        ann.records = ann.records[: split.max_clips]
    if not ann.records:
        raise ConfigError(f"{split.annotations}: no clip with a media file (check video_dir = {split.video_dir!r})")
    return ann


def task_of(ann: Annotations) -> dict[str, Any]:
    """The model's task fields from the training annotations."""
    return dict(num_classes=ann.num_classes, label_names=tuple(ann.label_names), problem_type=ann.problem_type,
                heads=dict(ann.heads) if ann.heads else None)


class StepSampler(Sampler[int]):
    """This process's dataset indices for steps [start_step, steps_per_epoch) of one epoch.

    The epoch's permutation depends on (seed, epoch) only. Step s uses permutation entries
    [s * G, (s + 1) * G) (G = global batch); process r takes the r-th of W equal contiguous parts, which it reads
    as consecutive micro-batches. The clips that do not fill a last global batch are left out (drop_last).
    """

    def __init__(self, n: int, global_batch: int, world_size: int, rank: int, seed: int, epoch: int,
                 start_step: int, steps_per_epoch: int) -> None:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
        perm = torch.randperm(n, generator=g)[: steps_per_epoch * global_batch]
        self.indices = perm.view(steps_per_epoch, world_size, -1)[start_step:, rank].reshape(-1).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------------- logs
class RunLogger:
    """CSV files and TensorBoard events (rank 0 only). On resume, rows after the resumed step (and rows of the
    final test) are dropped: they belong to the interrupted tail that is being redone."""

    def __init__(self, out: Path, active: bool, tensorboard: bool, start_step: int) -> None:
        self.out, self.active = out, active
        self.tb = None
        if not active:
            return
        for name in ("train_log.csv", "eval_log.csv"):
            _truncate_csv(out / name, start_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # tensorboard is a dependency; a broken install should not stop training
                tqdm.write(f"TensorBoard logging off ({e}); CSV logs are still written")
            else:
                # Events after the resumed step belong to the interrupted tail (those at it were logged before
                # its checkpoint was written).
                self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def log(self, name: str, step: int, values: dict[str, Any], prefix: str) -> None:
        if not self.active:
            return
        path = self.out / name
        row = {"step": step, **values}
        new = not path.exists() or path.stat().st_size == 0
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _truncate_csv(path: Path, step: int) -> None:
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    # The final test runs after the last checkpoint: a resumed run redoes it, so its rows go too.
    split = rows[0].index("split") if "split" in rows[0] else None
    keep = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= step
                        and not (split is not None and len(r) > split and r[split] == "test")]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(keep)


# ---------------------------------------------------------------------------------------------------- training
def _autocast(device: torch.device, precision: str):
    """bf16 autocast on a GPU that supports it (precision 'auto' or 'bf16'); fp32 on the CPU."""
    if precision == "fp32" or device.type != "cuda":
        if precision == "bf16" and device.type != "cuda":
            raise ConfigError("train.precision = 'bf16' needs a CUDA device; use 'auto' or 'fp32' on the CPU")
        return None
    if not torch.cuda.is_bf16_supported():
        if precision == "bf16":
            raise ConfigError(f"train.precision = 'bf16' but {torch.cuda.get_device_name(device)} has no bf16")
        return None
    return torch.autocast("cuda", dtype=torch.bfloat16)


def _run_identity(d: dict[str, Any]) -> dict[str, Any]:
    """The parts of a resolved config that define a run: a resumed run must not change them."""
    return {**{k: v for k, v in d.items() if k in _RUN_SECTIONS}, "train": {"seed": d["train"]["seed"]}}


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        return out
    return [] if a == b else [path]


def train(cfg: RunConfig, resume: bool = False, cache: dict | None = None) -> Path:
    """Train as configured; returns the final model directory. With `resume`, continue from the newest
    checkpoint in train.output_dir. With train.cache_decoded, `cache` (a dict, see VideoDataset) keeps the decoded
    clips for the caller: several runs on the same files in one process then decode them once."""
    info = distributed.setup(cfg.train.device)
    try:
        return _train(cfg, resume, info, cache)
    finally:
        distributed.cleanup()


def _train(cfg: RunConfig, resume: bool, info: distributed.DistInfo, cache: dict | None = None) -> Path:
    tc, oc = cfg.train, cfg.optim
    out = Path(tc.output_dir)
    ckpt_path = latest_checkpoint(out)
    if resume and ckpt_path is None:
        raise ConfigError(f"--resume: no checkpoint in {out / 'checkpoints'} (train.output_dir); start without "
                          "--resume")
    if not resume and ckpt_path is not None:
        raise ConfigError(f"{out} already holds checkpoints of a run; pass --resume to continue it, or choose "
                          "another train.output_dir")
    if cfg.dataset.train is None:
        raise ConfigError("dataset.train is required (an annotation file to train on)")
    ck = load_checkpoint(ckpt_path) if resume else None
    if info.is_main:
        for p in remove_partial_files(out):
            tqdm.write(f"removed {p.name}, left by a checkpoint write that was interrupted")

    # ---- data and model configs
    train_ann = read_split(cfg.dataset.train)
    model_config = cfg.model_config(**task_of(train_ann))
    data_config = cfg.data_config(model_config)
    if cfg.auto_stats and "spectrogram" in data_config.modalities:
        if ck is not None:  # measured when the run started
            front_end = json.loads(ck["config"])["data"]["front_end"]
            mean, std = front_end["mean"], front_end["std"]
        else:
            mean, std = _measure_stats(train_ann, data_config, tc, info)
        data_config = dataclasses.replace(
            data_config, front_end=dataclasses.replace(data_config.front_end, mean=mean, std=std))
    val_ann = read_split(cfg.dataset.val, train_ann.label_names) if cfg.dataset.val else None
    test_ann = read_split(cfg.dataset.test, train_ann.label_names) if cfg.dataset.test else None
    resolved = RunConfig.from_dict({**cfg.to_dict(), "model": model_config.to_dict(), "data": data_config.to_dict()})
    resolved.model.pop("model_type", None)
    resolved.model.pop("format_version", None)

    world, accum, G = info.world_size, oc.grad_accum_steps, oc.batch_size
    if G % (world * accum):
        raise ConfigError(f"optim.batch_size = {G} must be divisible by processes x grad_accum_steps = "
                          f"{world} x {accum}")
    micro = G // (world * accum)
    n = len(train_ann.records)
    steps_per_epoch = n // G
    if steps_per_epoch == 0:
        raise ConfigError(f"{train_ann.source}: {n} clips, fewer than optim.batch_size = {G}")
    total = oc.max_steps or math.ceil(oc.epochs * steps_per_epoch)
    warmup = round(oc.warmup_epochs * steps_per_epoch)
    eval_every = round(tc.eval_every_epochs * steps_per_epoch) if tc.eval_every_epochs > 0 else 0
    if warmup > total:
        raise ConfigError(f"optim.warmup_epochs = {oc.warmup_epochs} is {warmup} steps, but the run has {total} steps"
                          f" ({steps_per_epoch} per epoch): the learning rate would never reach optim.lr; lower "
                          "optim.warmup_epochs")

    # ---- model, optimiser, schedule
    torch.manual_seed(tc.seed)  # the same initial weights on every process (DDP also broadcasts rank 0's)
    model = MBT(model_config)
    if cfg.init.checkpoint and not resume:
        from ..weights.vit import init_from_vit

        report = init_from_vit(model, cfg.init.checkpoint, kernel_init=cfg.init.kernel_init,
                               init_bottleneck=cfg.init.init_bottleneck,
                               restore_output_proj=cfg.init.restore_output_proj)
        if info.is_main:
            tqdm.write(report.summary())
    model.gradient_checkpointing = tc.activation_checkpointing
    model.to(info.device).train()
    ddp: torch.nn.Module = model
    if info.distributed:
        # A bottleneck model with late fusion or a single modality never uses its bottleneck tokens.
        unused = model_config.use_bottleneck and (model_config.fusion_layer >= model_config.num_layers
                                                  or len(model_config.modality_fusion) == 1)
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device] if info.device.type == "cuda" else None, find_unused_parameters=unused)
    optimizer = make_optimizer(model, oc.name, oc.lr, oc.weight_decay, oc.momentum, oc.nesterov, oc.betas)
    scheduler = make_scheduler(optimizer, warmup, total)
    step = 0
    if resume:
        changed = _diff(_run_identity(json.loads(ck["config"])), _run_identity(resolved.to_dict()))
        if changed:
            raise ConfigError(f"--resume: the config differs from the checkpoint's in {changed}; resume with the "
                              f"run's own config ({out / 'config.yaml'}) or start a new train.output_dir")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        step = int(ck["step"])
        set_rng_state(ck["rng"])
        if int(ck.get("world_size", world)) != world and info.is_main:
            tqdm.write(f"note: the checkpoint was written by {ck['world_size']} process(es), this run has {world}: "
                       "the same clips make each step, but mixup and stochastic depth draw per process, so the run "
                       "will not repeat an uninterrupted one exactly")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        resolved.to_yaml(out / "config.yaml")
        action = f"resuming from {ckpt_path.name}" if resume else "starting"
        tqdm.write(f"{action}: {train_ann.summary()}; {world} process(es) on {info.device}, {micro} clips x "
                   f"{accum} micro-batches x {world} per step of {G}; {steps_per_epoch} steps per epoch, "
                   f"{total} steps")
    distributed.barrier(info)

    autocast = _autocast(info.device, tc.precision)
    cache = (cache if cache is not None else {}) if tc.cache_decoded else None
    dataset = VideoDataset(train_ann, data_config, split="train", seed=tc.seed, cache=cache)
    logger = RunLogger(out, info.is_main, tc.tensorboard, step)
    skips = SkipReport()
    alpha = data_config.augment.mixup_alpha if data_config.augment else 0.0
    bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (tc.progress and info.is_main))
    window_clips, window_start, last_loss = 0, time.perf_counter(), float("nan")

    def checkpoint_state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step,
                "data_position": {"epoch": step // steps_per_epoch, "step_in_epoch": step % steps_per_epoch,
                                  "seed": tc.seed},
                "rng": rng_state(), "config": json.dumps(resolved.to_dict()), "world_size": world}

    def run_eval(ann: Annotations, split: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return evaluate_dataset(model, ann, data_config, info.device, split=split,
                                batch_size=tc.eval_batch_size or micro, num_workers=tc.num_workers,
                                clips_per_forward=tc.clips_per_forward, on_error="skip", info=info,
                                autocast=autocast, progress=tc.progress, cache=cache)

    while step < total:
        epoch, start = divmod(step, steps_per_epoch)
        dataset.set_epoch(epoch)
        sampler = StepSampler(n, G, world, info.rank, tc.seed, epoch, start, steps_per_epoch)
        loader = make_loader(dataset, micro, num_workers=tc.num_workers, sampler=sampler, drop_last=False)
        batches = iter(loader)
        for _ in range(start, steps_per_epoch):
            if step >= total:
                break
            group = [next(batches) for _ in range(accum)]
            for b in group:
                skips.update(b)
            stats = _train_step(ddp, model, group, optimizer, info, cfg, step, alpha, autocast)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            bar.update(1)
            window_clips += stats["clips"]
            if stats["clips"]:
                last_loss = stats["loss"]
            if step % tc.log_every_steps == 0 or step == total:
                elapsed = time.perf_counter() - window_start
                rate = window_clips / max(elapsed, 1e-9)
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.3g}", clips_s=f"{rate:.1f}", refresh=False)
                logger.log("train_log.csv", step, {"epoch": round(step / steps_per_epoch, 4), "loss": stats["loss"],
                                                   "lr": lr, "grad_norm": stats["grad_norm"], "clips_per_s": rate,
                                                   "skipped": stats["skipped"]}, "train")
                window_clips, window_start = 0, time.perf_counter()
            # Validation before the checkpoint of the same step: a run killed in between redoes both.
            if val_ann is not None and ((eval_every and step % eval_every == 0) or step == total):
                summary, _ = run_eval(val_ann, "val")
                logger.log("eval_log.csv", step, {"split": "val", **summary}, "val")
                if info.is_main:
                    tqdm.write(f"step {step}: val " + _brief(summary))
            if step % tc.checkpoint_every_steps == 0 or step == total:
                if info.is_main:
                    save_checkpoint(checkpoint_state(), out, step, tc.keep_checkpoints)
                distributed.barrier(info)
        if skips.skipped:
            tqdm.write(f"[rank {info.rank}] epoch {epoch}: {skips.summary()}")
        skips.reset()
    bar.close()

    model_dir = out / MODEL_DIR
    if info.is_main:
        model.save_pretrained(model_dir, data_config=data_config)
        tqdm.write(f"wrote {model_dir}")
    distributed.barrier(info)
    if test_ann is not None:
        summary, rows = run_eval(test_ann, "test")
        logger.log("eval_log.csv", step, {"split": "test", **summary}, "test")
        if info.is_main:
            paths = write_results(out / EVAL_DIR, summary, rows)
            tqdm.write(f"test ({summary['clips_per_video']} clips per video): {_brief(summary)}; wrote "
                       f"{paths[0]} and {paths[1]}")
    logger.close()
    return model_dir


def _measure_stats(ann: Annotations, data_config, tc, info: distributed.DistInfo) -> tuple[float, float]:
    """data.front_end mean/std 'auto': measured by rank 0 on the first train.stats_max_clips training clips (the
    middle window of each, as `mbt stats` does) and shared with the other processes."""
    from ..data.stats import compute_stats

    mean = std = 0.0
    if info.is_main:
        stats = compute_stats(ann, data_config, max_clips=tc.stats_max_clips, num_workers=tc.num_workers,
                              progress=tc.progress)
        mean, std = stats.mean, stats.std
        tqdm.write(f"spectrogram statistics (data.front_end mean/std 'auto'): mean {mean:.6f}, std {std:.6f} over "
                   f"{stats.num_clips} clips")
    return distributed.all_reduce_sum(mean, info), distributed.all_reduce_sum(std, info)


def _train_step(ddp: torch.nn.Module, model: MBT, group: list[dict[str, Any]], optimizer: torch.optim.Optimizer,
                info: distributed.DistInfo, cfg: RunConfig, step: int, alpha: float, autocast
                ) -> dict[str, Any]:
    """One optimiser step over this process's micro-batches `group`. Returns the step's mean loss over all
    processes, the clips used, the clips skipped and the gradient norm (before clipping)."""
    oc, cfgm = cfg.optim, model.config
    valid, skipped = distributed.all_reduce_sums(
        [sum(b["size"] for b in group), sum(len(b["skipped"]) for b in group)], info)
    skipped = int(skipped)
    optimizer.zero_grad(set_to_none=True)
    if valid == 0:  # every clip of the step was unreadable (on every process): nothing to learn from
        return {"loss": float("nan"), "clips": 0, "skipped": skipped, "grad_norm": float("nan")}
    # Gradients: sum over all clips of the step / their number. DDP averages over processes, hence world / valid.
    scale = info.world_size / valid
    loss_sum = 0.0
    for i, batch in enumerate(group):
        last = i == len(group) - 1
        sync = contextlib.nullcontext() if (last or not info.distributed) else ddp.no_sync()
        with sync:
            if batch["size"] == 0:
                if info.distributed and last:  # take part in the gradient all-reduce with a zero contribution
                    inputs = {m: torch.zeros((1, *cfgm.input_shape(m)), device=info.device)
                              for m in cfgm.modality_fusion}
                    out = ddp(inputs)
                    (out.logits.sum() * 0.0).backward()
                continue
            inputs = {m: batch[m].to(info.device, non_blocking=True) for m in cfgm.modality_fusion if m in batch}
            labels = batch["label"].to(info.device, non_blocking=True).float()
            if alpha > 0:
                rng = np.random.default_rng(_seed(cfg.train.seed, step, info.rank, i, 1))
                mixed, _ = mixup({**inputs, "label": labels}, alpha, rng)
                inputs = {m: mixed[m] for m in inputs}
                labels = mixed["label"]
            torch.manual_seed(_seed(cfg.train.seed, step, info.rank, i, 2))  # stochastic depth, dropout
            with autocast or contextlib.nullcontext():
                out = ddp(inputs)
            losses = mbt_loss(_float(out), labels, cfgm.problem_type or "multi_label", cfgm.heads,
                              oc.label_smoothing)
            (losses.sum() * scale).backward()
            loss_sum += float(losses.detach().sum())
    max_norm = oc.max_grad_norm if oc.max_grad_norm is not None else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    optimizer.step()
    loss = distributed.all_reduce_sum(loss_sum, info) / valid
    return {"loss": loss, "clips": int(valid), "skipped": skipped, "grad_norm": grad_norm}


def _float(out):
    """Logits in float32 for the loss (autocast may give bf16)."""
    if out.logits.dtype == torch.float32:
        return out
    out.logits = out.logits.float()
    if out.modality_logits:
        out.modality_logits = {m: v.float() for m, v in out.modality_logits.items()}
    return out


def _brief(summary: dict[str, Any]) -> str:
    keys = [k for k in ("loss", "mAP", "mAUC", "d_prime", "top1", "top5", "prec@1", "action_top1") if k in summary]
    keys += [k for k in summary if k.endswith("_top1") and k not in keys]
    return ", ".join(f"{k} {summary[k]:.4f}" for k in keys if isinstance(summary[k], (int, float)))

