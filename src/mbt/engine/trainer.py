"""`train(RunConfig)`: from a config to a trained, evaluated model directory, on one CPU or many GPUs (torchrun).

`Trainer` holds the run; its methods are the steps of training, in the style of torchtitan's `train.py`:
`setup` (annotations, configs, model, optimiser, schedule; `restore` on --resume), `train_step` (one optimiser
step), `evaluate` (validation or test), `save_checkpoint`, `save_model`, and `fit`, the loop that calls them.

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
    eval/                       metrics.json, per_class.csv and skipped.csv of the final multi-clip test (if
                                dataset.test is set)
    skipped_train.csv           epoch, path and reason of every training clip that could not be read
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler
from tqdm.auto import tqdm

from ..data.annotations import Annotations
from ..data.datasets import SkipReport, VideoDataset, make_loader, write_skipped
from ..data.stats import compute_stats
from ..data.transforms import mixup, modality_dropout
from ..errors import CheckpointError, ConfigError, NonFiniteError
from ..progress import progress_bar
from ..models.mbt import MBT
from ..weights.streams import MBTEncoder, init_streams, input_differences, read_encoder
from ..weights.vit import ViTWeights, read_vit_checkpoint
from . import distributed
from .checkpoint import (CHECKPOINT_DIR, intact_checkpoints, latest_checkpoint, list_checkpoints, load_checkpoint,
                         remove_partial_files, rng_state, save_checkpoint, set_rng_state)
from .config import RunConfig, task_of
from .evaluate import evaluate_dataset, write_results
from .losses import mbt_loss
from .optim import make_optimizer, make_scheduler

MODEL_DIR = "model"
EVAL_DIR = "eval"
SKIPPED_TRAIN = "skipped_train.csv"
ESTIMATE_AFTER = 5  # steps timed for the run's time estimate (the first ones include starting the loader)  # epoch, path, reason of every training clip that could not be read
# Sections whose change makes a checkpoint a different run (train.* may change on resume: workers, logging, ...).
_RUN_SECTIONS = ("model", "data", "dataset", "init", "optim")


# ---------------------------------------------------------------------------------------------------- data
class StepSampler(Sampler[int]):
    """This process's dataset indices for steps [start_step, steps_per_epoch) of one epoch.

    The epoch's permutation depends on (seed, epoch) only. Step s uses permutation entries
    [s * G, (s + 1) * G) (G = global batch); process r takes the r-th of W equal contiguous parts, which it reads
    as consecutive micro-batches. The clips that do not fill a last global batch are left out (drop_last).
    """

    def __init__(self, n: int, global_batch: int, world_size: int, rank: int, seed: int, epoch: int,
                 start_step: int, steps_per_epoch: int) -> None:
        g = torch.Generator().manual_seed(derive_seed(seed, epoch))
        perm = torch.randperm(n, generator=g)[: steps_per_epoch * global_batch]
        self.indices = perm.view(steps_per_epoch, world_size, -1)[start_step:, rank].reshape(-1).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def derive_seed(*keys: int) -> int:
    """One 32-bit seed from a tuple of integers (numpy's SeedSequence): the seed of every random draw of a run is
    derived from (train.seed, what it is for), so runs resume and split over processes exactly."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------------- logs
class RunLogger:
    """CSV files and TensorBoard events (rank 0 only). On resume, rows after the resumed step (and rows of the
    final test) are dropped: they belong to the interrupted tail that is being redone."""

    def __init__(self, out: Path, active: bool, tensorboard: bool, start_step: int, start_epoch: int = 0) -> None:
        self.out, self.active = out, active
        self.tb = None
        if not active:
            return
        for name in ("train_log.csv", "eval_log.csv"):
            _truncate_csv(out / name, start_step)
        _truncate_skips(out / SKIPPED_TRAIN, start_epoch)
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
        row = {"step": step, **{k: v for k, v in values.items() if k != "skipped_files"}}  # listed in a CSV
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


def _truncate_skips(path: Path, epoch: int) -> None:
    """Drop the skipped-clip rows of the epochs a resumed run redoes."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    keep = rows[:1] + [r for r in rows[1:] if r and int(r[0]) < epoch]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(keep)


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


def train(cfg: RunConfig, resume: bool = False, cache: dict | None = None,
          resume_from: str | Path | None = None) -> Path:
    """Train as configured; returns the final model directory. With `resume`, continue from the newest
    checkpoint in train.output_dir; with `resume_from`, from that checkpoint (an older one, when the newest is
    damaged). With train.cache_decoded, `cache` (a dict, see VideoDataset) keeps the decoded clips for the caller:
    several runs on the same files in one process then decode them once."""
    info = distributed.setup(cfg.train.device)
    try:
        return Trainer(cfg, info, resume=resume, cache=cache, resume_from=resume_from).fit()
    finally:
        distributed.cleanup()


class Trainer:
    """One training run: `Trainer(cfg, info).fit()` trains, saves the model directory and tests it.

    After `setup()`: `train_ann`/`val_ann`/`test_ann` (Annotations), `model_config`, `data_config`, `resolved` (the
    run config with both filled in, written to config.yaml), the step geometry (`micro`, `steps_per_epoch`,
    `total`, `warmup`, `eval_every`), `model` (and `ddp`, its DistributedDataParallel wrapper under torchrun),
    `optimizer`, `scheduler` and `step` (the number of optimiser steps taken).
    """

    def __init__(self, cfg: RunConfig, info: distributed.DistInfo, resume: bool = False,
                 cache: dict | None = None, resume_from: str | Path | None = None) -> None:
        self.cfg, self.info = cfg, info
        self.resume_from = None if resume_from is None else Path(resume_from)
        self.resume = resume or self.resume_from is not None
        self.out = Path(cfg.train.output_dir)
        self.cache = (cache if cache is not None else {}) if cfg.train.cache_decoded else None
        self.step = 0
        self.nonfinite_steps = self.nonfinite_in_a_row = 0  # skipped steps: in all, and the current run of them
        self.ckpt: dict[str, Any] | None = None
        self.init_base: ViTWeights | None = None  # the pretrained sources, read in set-up, written into the model
        self.init_streams: dict[str, ViTWeights | MBTEncoder] | None = None

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Read the annotations, resolve the model and data configs, size the steps, build the model, optimiser
        and schedule, and restore the newest checkpoint with --resume. Errors that depend only on the config and
        the annotations come before anything is built."""
        cfg, info = self.cfg, self.info
        ckpt_path = latest_checkpoint(self.out) if self.resume_from is None else self.resume_from
        if self.resume_from is not None and not ckpt_path.is_file():
            raise CheckpointError(f"--resume-from {ckpt_path}: no such checkpoint (the run's checkpoints are in "
                                  f"{self.out / CHECKPOINT_DIR})")
        if self.resume and ckpt_path is None:
            raise ConfigError(f"--resume: no checkpoint in {self.out / 'checkpoints'} (train.output_dir); start "
                              "without --resume")
        if not self.resume and ckpt_path is not None:
            raise ConfigError(f"{self.out} already holds checkpoints of a run; pass --resume to continue it, or "
                              "choose another train.output_dir")
        if cfg.dataset.train is None:
            raise ConfigError("dataset.train is required (an annotation file to train on)")
        self.ckpt_path = ckpt_path
        self.ckpt = self._load_checkpoint(ckpt_path) if self.resume else None  # checksum verified here
        if self.resume_from is not None:
            self._supersede_newer(ckpt_path)
        if info.is_main:
            for p in remove_partial_files(self.out):
                tqdm.write(f"removed {p.name}, left by a checkpoint write that was interrupted")
        self.train_ann = cfg.dataset.train.read()
        self._setup_steps()  # errors that need only the clip count come before any statistics are measured
        self._setup_data()
        self._setup_model()
        if self.resume:
            self.restore()
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.resolved.to_yaml(self.out / "config.yaml")
            action = f"resuming from {ckpt_path.name}" if self.resume else "starting"
            tqdm.write(f"{action}: {self.train_ann.summary()}; {info.world_size} process(es) on {info.device}, "
                       f"{self.micro} clips x {self.cfg.optim.grad_accum_steps} micro-batches x {info.world_size} "
                       f"per step of {self.cfg.optim.batch_size}; {self.steps_per_epoch} steps per epoch, "
                       f"{self.total} steps")
        distributed.barrier(info)

    def _load_checkpoint(self, path: Path) -> dict[str, Any]:
        """The checkpoint to resume from; a damaged one is an error that names it and the intact older ones."""
        try:
            return load_checkpoint(path)
        except CheckpointError as e:
            older = [p for p in intact_checkpoints(self.out) if p.name < path.name]
            hint = (f"; the newest intact checkpoint is {older[-1]}: resume from it with --resume-from {older[-1]}"
                    if older else "; no older intact checkpoint is kept: start a new train.output_dir")
            raise CheckpointError(f"{e}{hint}") from None

    def _supersede_newer(self, path: Path) -> None:
        """--resume-from `path` (read and verified already): the run's newer checkpoints (damaged ones, or a branch
        abandoned) are renamed to *.pt.superseded, so the run continues from `path` and nothing is deleted."""
        if self.info.is_main and path.resolve().parent == (self.out / CHECKPOINT_DIR).resolve():
            for newer in [p for p in list_checkpoints(self.out) if p.name > path.name]:
                newer.rename(newer.with_name(newer.name + ".superseded"))
                tqdm.write(f"{newer.name} comes after {path.name}: kept as {newer.name}.superseded")
        distributed.barrier(self.info)

    def _setup_data(self) -> None:
        """The model and data configs (spectrogram statistics measured with mean/std 'auto', or read back from the
        checkpoint), the validation and test annotations, and the resolved run config."""
        cfg = self.cfg
        self.model_config = cfg.model_config(**task_of(self.train_ann))
        self._read_init_sources()  # before the statistics: a wrong path or architecture fails at once
        channels = self._spectrogram_channels()
        if channels is not None and channels != self.model_config.spectrogram_channels:
            self.model_config = self.model_config.replace(spectrogram_channels=channels)
        data_config = cfg.data_config(self.model_config)
        if cfg.auto_stats and "spectrogram" in data_config.modalities:
            if self.ckpt is not None:  # measured when the run started
                front_end = json.loads(self.ckpt["config"])["data"]["front_end"]
                mean, std = front_end["mean"], front_end["std"]
            else:
                mean, std = self._measure_stats(data_config)
            data_config = dataclasses.replace(
                data_config, front_end=dataclasses.replace(data_config.front_end, mean=mean, std=std))
        self.data_config = data_config
        names = self.train_ann.label_names
        self.val_ann = cfg.dataset.val.read(names) if cfg.dataset.val else None
        self.test_ann = cfg.dataset.test.read(names) if cfg.dataset.test else None
        resolved = RunConfig.from_dict({**cfg.to_dict(), "model": self.model_config.to_dict(),
                                        "data": data_config.to_dict()})
        resolved.model.pop("model_type", None)
        resolved.model.pop("format_version", None)
        self.resolved = resolved

    def _read_init_sources(self) -> None:
        """Read init.checkpoint (a ViT for every stream) and the per-stream encoders (init.rgb / spectrogram),
        unless resuming (the checkpoint then holds the weights)."""
        init = self.cfg.init
        self.init_base = self.init_streams = None
        if self.resume or not (init.checkpoint or init.streams):
            return
        wrong = sorted(set(init.streams) - set(self.model_config.modality_fusion))
        if wrong:
            raise ConfigError(f"init.{wrong[0]} is set, but the model's modalities are "
                              f"{list(self.model_config.modality_fusion)}; remove it or add the modality")
        self.init_base = read_vit_checkpoint(init.checkpoint) if init.checkpoint else None
        self.init_streams = {m: read_encoder(path, m) for m, path in init.streams.items()}

    def _spectrogram_channels(self) -> int | None:
        """The spectrogram channel count the run's model gets when model.spectrogram_channels is not set: that of
        the spectrogram stream's pretrained kernel, so it trains as its source did (an ImageNet ViT: 3 identical
        copies of the log-mel channel, as in Scenic; an AST: 1). On resume, the checkpoint's."""
        if "spectrogram" not in self.model_config.modality_fusion or "spectrogram_channels" in self.cfg.model:
            return None
        if self.ckpt is not None:
            return json.loads(self.ckpt["config"])["model"].get("spectrogram_channels")
        src = (self.init_streams or {}).get("spectrogram", self.init_base)
        if src is None:
            return None
        return src.in_channels if isinstance(src, ViTWeights) else src.config.spectrogram_channels

    def _init_weights(self, model: MBT) -> None:
        """Write the pretrained sources into the new model and print what came from where; for a stream taken
        from an mbt model, name the data fields whose values differ from the inputs that model was trained on."""
        init = self.cfg.init
        report = init_streams(model, self.init_streams, checkpoint=self.init_base, kernel_init=init.kernel_init,
                              init_bottleneck=init.init_bottleneck, restore_output_proj=init.restore_output_proj,
                              encoder_norm_from=init.encoder_norm_from)
        if self.info.is_main:
            tqdm.write(report.summary())
            for m, src in self.init_streams.items():
                if isinstance(src, MBTEncoder):
                    differ = input_differences(src, m, self.data_config)
                    if differ:
                        tqdm.write(f"note: the {m} stream's source {src.source} was trained on other inputs: "
                                   + "; ".join(differ))
        self.init_base = self.init_streams = None  # the weights are in the model now

    def _setup_steps(self) -> None:
        """The step geometry: clips per micro-batch, steps per epoch, total, warm-up and validation steps."""
        oc, tc, world = self.cfg.optim, self.cfg.train, self.info.world_size
        accum, G = oc.grad_accum_steps, oc.batch_size
        if G % (world * accum):
            raise ConfigError(f"optim.batch_size = {G} must be divisible by processes x grad_accum_steps = "
                              f"{world} x {accum}")
        self.micro = G // (world * accum)
        n = len(self.train_ann.records)
        self.steps_per_epoch = n // G
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{self.train_ann.source}: {n} clips, fewer than optim.batch_size = {G}")
        self.total = oc.max_steps or math.ceil(oc.epochs * self.steps_per_epoch)
        self.warmup = round(oc.warmup_epochs * self.steps_per_epoch)
        self.eval_every = round(tc.eval_every_epochs * self.steps_per_epoch) if tc.eval_every_epochs > 0 else 0
        if self.warmup > self.total:
            raise ConfigError(f"optim.warmup_epochs = {oc.warmup_epochs} is {self.warmup} steps, but the run has "
                              f"{self.total} steps ({self.steps_per_epoch} per epoch): the learning rate would never "
                              "reach optim.lr; lower optim.warmup_epochs")

    def _setup_model(self) -> None:
        """The model (ImageNet ViT initialisation unless resuming), its DDP wrapper, optimiser and schedule."""
        cfg, tc, oc, info = self.cfg, self.cfg.train, self.cfg.optim, self.info
        torch.manual_seed(tc.seed)  # the same initial weights on every process (DDP also broadcasts rank 0's)
        model = MBT(self.model_config)
        if self.init_base is not None or self.init_streams:
            self._init_weights(model)
        model.gradient_checkpointing = tc.activation_checkpointing
        model.to(info.device).train()
        self.model = model
        self.ddp: torch.nn.Module = model
        if info.distributed:
            # A bottleneck model with late fusion or a single modality never uses its bottleneck tokens.
            unused = self.model_config.use_bottleneck and not self.model_config.uses_bottleneck(training=True)
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[info.device] if info.device.type == "cuda" else None,
                find_unused_parameters=unused)
        self.optimizer = make_optimizer(model, oc.name, oc.lr, oc.weight_decay, oc.momentum, oc.nesterov, oc.betas)
        self.scheduler = make_scheduler(self.optimizer, self.warmup, self.total)
        self.autocast = _autocast(info.device, tc.precision)

    def restore(self) -> None:
        """Continue from the checkpoint read by `setup`: the same run config (else an error naming the changed
        fields), then the model, optimiser, schedule, step and random states."""
        ck, info = self.ckpt, self.info
        changed = _diff(_run_identity(json.loads(ck["config"])), _run_identity(self.resolved.to_dict()))
        if changed:
            raise ConfigError(f"--resume: the config differs from the checkpoint's in {changed}; resume with the "
                              f"run's own config ({self.out / 'config.yaml'}) or start a new train.output_dir")
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.step = int(ck["step"])
        set_rng_state(ck["rng"])
        if int(ck.get("world_size", info.world_size)) != info.world_size and info.is_main:
            tqdm.write(f"note: the checkpoint was written by {ck['world_size']} process(es), this run has "
                       f"{info.world_size}: the same clips make each step, but mixup and stochastic depth draw per "
                       "process, so the run will not repeat an uninterrupted one exactly")

    def _measure_stats(self, data_config) -> tuple[float, float]:
        """data.front_end mean/std 'auto': measured by rank 0 on the first train.stats_max_clips training clips
        (the middle window of each, as `mbt stats` does) and shared with the other processes."""
        tc, info = self.cfg.train, self.info
        mean = std = 0.0
        if info.is_main:
            stats = compute_stats(self.train_ann, data_config, max_clips=tc.stats_max_clips,
                                  num_workers=tc.num_workers, progress=tc.progress)
            mean, std = stats.mean, stats.std
            tqdm.write(f"spectrogram statistics (data.front_end mean/std 'auto'): mean {mean:.6f}, std {std:.6f} "
                       f"over {stats.num_clips} clips")
        return distributed.all_reduce_sum(mean, info), distributed.all_reduce_sum(std, info)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        """Set up, train to the last step (validating and checkpointing on the way), save the model directory
        and test it. Returns the model directory."""
        self.setup()
        cfg, tc, info = self.cfg, self.cfg.train, self.info
        G, accum, world = cfg.optim.batch_size, cfg.optim.grad_accum_steps, info.world_size
        dataset = VideoDataset(self.train_ann, self.data_config, split="train", seed=tc.seed, cache=self.cache)
        self.logger = RunLogger(self.out, info.is_main, tc.tensorboard, self.step, self.step // self.steps_per_epoch)
        skips = SkipReport()
        bar = progress_bar(total=self.total, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (tc.progress and info.is_main))
        window_clips, window_start, last_loss = 0, time.perf_counter(), float("nan")
        n = len(self.train_ann.records)
        first_step, t_first = self.step, time.perf_counter()
        while self.step < self.total:
            epoch, start = divmod(self.step, self.steps_per_epoch)
            dataset.set_epoch(epoch)
            sampler = StepSampler(n, G, world, info.rank, tc.seed, epoch, start, self.steps_per_epoch)
            batches = iter(make_loader(dataset, self.micro, num_workers=tc.num_workers, sampler=sampler,
                                       drop_last=False))
            for _ in range(start, self.steps_per_epoch):
                if self.step >= self.total:
                    break
                group = [next(batches) for _ in range(accum)]
                for b in group:
                    skips.update(b)
                stats = self.train_step(group)
                self._check_finite_step(stats)
                lr = self.optimizer.param_groups[0]["lr"]
                with warnings.catch_warnings():  # a skipped step still advances the schedule
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                    self.scheduler.step()
                self.step += 1
                bar.update(1)
                if self.step == first_step + ESTIMATE_AFTER and info.is_main and self.step < self.total:
                    per_step = (time.perf_counter() - t_first) / ESTIMATE_AFTER
                    tqdm.write(f"after {ESTIMATE_AFTER} steps: {per_step:.2f} s a step, so about "
                               f"{per_step * (self.total - self.step) / 60:.1f} min for the {self.total - self.step} "
                               "steps left (without evaluation; fewer: --optim.max_steps or --optim.epochs)")
                window_clips += stats["clips"]
                if stats["clips"]:
                    last_loss = stats["loss"]
                if self.step % tc.log_every_steps == 0 or self.step == self.total:
                    elapsed = time.perf_counter() - window_start
                    rate = window_clips / max(elapsed, 1e-9)
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.3g}", clips_s=f"{rate:.1f}", refresh=False)
                    self.logger.log("train_log.csv", self.step, {
                        "epoch": round(self.step / self.steps_per_epoch, 4), "loss": stats["loss"], "lr": lr,
                        "grad_norm": stats["grad_norm"], "clips_per_s": rate, "skipped": stats["skipped"],
                        "nonfinite_steps": self.nonfinite_steps}, "train")
                    window_clips, window_start = 0, time.perf_counter()
                # Validation before the checkpoint of the same step: a run killed in between redoes both.
                if self.val_ann is not None and ((self.eval_every and self.step % self.eval_every == 0)
                                                 or self.step == self.total):
                    self.validate()
                if self.step % tc.checkpoint_every_steps == 0 or self.step == self.total:
                    self.save_checkpoint()
            if skips.skipped:
                tqdm.write(f"[rank {info.rank}] epoch {epoch}: {skips.summary()}")
            skipped = distributed.gather_objects(skips.skipped, info)
            if info.is_main and skipped:
                write_skipped(self.out / SKIPPED_TRAIN, skipped, {"epoch": epoch}, append=True)
            skips.reset()
        bar.close()
        model_dir = self.save_model()
        if self.test_ann is not None:
            self.test()
        self.logger.close()
        return model_dir

    def _check_finite_step(self, stats: dict[str, Any]) -> None:
        """Count a skipped non-finite step and name its files; train.max_nonfinite_steps in a row end the run."""
        if not stats.get("nonfinite"):
            self.nonfinite_in_a_row = 0
            return
        self.nonfinite_steps += 1
        self.nonfinite_in_a_row += 1
        files = stats["files"]
        listed = ", ".join(files[:8]) + (f" and {len(files) - 8} more" if len(files) > 8 else "")
        tqdm.write(f"[rank {self.info.rank}] step {self.step + 1}: non-finite loss ({stats['loss']}) or gradient "
                   f"norm ({stats['grad_norm']}); the step is skipped; its clips: {listed}")
        if self.nonfinite_in_a_row >= self.cfg.train.max_nonfinite_steps:
            raise NonFiniteError(
                f"{self.nonfinite_in_a_row} non-finite training steps in a row (up to step {self.step + 1}; "
                f"train.max_nonfinite_steps = {self.cfg.train.max_nonfinite_steps}): the run has diverged or its "
                f"data holds NaN/inf; lower optim.lr or check the clips named above (last batch: {listed}). The "
                "checkpoints written so far are finite: resume from one with --resume")

    def train_step(self, group: list[dict[str, Any]]) -> dict[str, Any]:
        """One optimiser step over this process's micro-batches `group`. Returns the step's mean loss over all
        processes, the clips used, the clips skipped and the gradient norm (before clipping). A step whose loss
        or gradient norm is NaN or inf changes nothing and returns 'nonfinite': True and the batch's 'files'."""
        cfg, info, model, ddp = self.cfg, self.info, self.model, self.ddp
        oc, cfgm, step = cfg.optim, model.config, self.step
        alpha = self.data_config.augment.mixup_alpha if self.data_config.augment else 0.0
        drop_probs = self.data_config.augment.modality_drop if self.data_config.augment else {}
        valid, skipped = distributed.all_reduce_sums(
            [sum(b["size"] for b in group), sum(len(b["skipped"]) for b in group)], info)
        skipped = int(skipped)
        self.optimizer.zero_grad(set_to_none=True)
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
                missing = {m: f.to(info.device) for m, f in (batch.get("missing") or {}).items() if m in inputs}
                if alpha > 0:
                    rng = np.random.default_rng(derive_seed(cfg.train.seed, step, info.rank, i, 1))
                    mixed, _ = mixup({**inputs, "label": labels, "missing": missing}, alpha, rng)
                    inputs = {m: mixed[m] for m in inputs}
                    labels, missing = mixed["label"], mixed["missing"]
                drop = {m: p for m, p in drop_probs.items() if m in inputs}
                if drop and len(inputs) > 1:  # modality dropout: some clips train without one stream
                    rng = np.random.default_rng(derive_seed(cfg.train.seed, step, info.rank, i, 3))
                    missing = modality_dropout(missing, drop, labels.shape[0], rng)
                inputs["missing"] = missing  # the model masks each clip's missing streams
                torch.manual_seed(derive_seed(cfg.train.seed, step, info.rank, i, 2))  # stochastic depth, dropout
                with self.autocast or contextlib.nullcontext():
                    out = ddp(inputs)
                losses = mbt_loss(_float(out), labels, cfgm.task, cfgm.heads, oc.label_smoothing)
                (losses.sum() * scale).backward()
                loss_sum += float(losses.detach().sum())
        max_norm = oc.max_grad_norm if oc.max_grad_norm is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        loss = distributed.all_reduce_sum(loss_sum, info) / valid  # the same on every process, as is grad_norm
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            # A NaN or inf would spread through the weights into every later output: the step is skipped.
            self.optimizer.zero_grad(set_to_none=True)
            return {"loss": loss, "clips": int(valid), "skipped": skipped, "grad_norm": grad_norm, "nonfinite": True,
                    "files": [p for b in group for p in b.get("path", [])]}
        self.optimizer.step()
        return {"loss": loss, "clips": int(valid), "skipped": skipped, "grad_norm": grad_norm}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, ann: Annotations, split: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Metrics of the current model on `ann` ('val': the middle clip; 'test': data.num_test_clips clips)."""
        tc = self.cfg.train
        return evaluate_dataset(self.model, ann, self.data_config, self.info.device, split=split,
                                batch_size=tc.eval_batch_size or self.micro, num_workers=tc.num_workers,
                                clips_per_forward=tc.clips_per_forward, on_error="skip", info=self.info,
                                autocast=self.autocast, progress=tc.progress, cache=self.cache)

    def validate(self) -> dict[str, Any]:
        """Evaluate on dataset.val, log it (eval_log.csv, TensorBoard) and print a line."""
        summary, _ = self.evaluate(self.val_ann, "val")
        self.logger.log("eval_log.csv", self.step, {"split": "val", **summary}, "val")
        if self.info.is_main:
            tqdm.write(f"step {self.step}: val " + _brief(summary))
        return summary

    def test(self) -> dict[str, Any]:
        """Evaluate the final model on dataset.test and write <output_dir>/eval (metrics.json, per_class.csv)."""
        summary, rows = self.evaluate(self.test_ann, "test")
        self.logger.log("eval_log.csv", self.step, {"split": "test", **summary}, "test")
        if self.info.is_main:
            paths = write_results(self.out / EVAL_DIR, summary, rows)
            tqdm.write(f"test ({summary['clips_per_video']} clips per video): {_brief(summary)}; wrote "
                       f"{paths[0]} and {paths[1]}")
        return summary

    # ------------------------------------------------------------------ saving
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resumed run needs (read back with torch.load(weights_only=True))."""
        spe = self.steps_per_epoch
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step,
                "data_position": {"epoch": self.step // spe, "step_in_epoch": self.step % spe,
                                  "seed": self.cfg.train.seed},
                "rng": rng_state(), "config": json.dumps(self.resolved.to_dict()),
                "world_size": self.info.world_size}

    def save_checkpoint(self) -> None:
        """Write checkpoints/step-<step>.pt (rank 0; the last train.keep_checkpoints are kept)."""
        if self.info.is_main:
            save_checkpoint(self.checkpoint_state(), self.out, self.step, self.cfg.train.keep_checkpoints)
        distributed.barrier(self.info)

    def save_model(self) -> Path:
        """Write the model directory <output_dir>/model with its preprocessor_config.json (rank 0)."""
        model_dir = self.out / MODEL_DIR
        if self.info.is_main:
            self.model.save_pretrained(model_dir, data_config=self.data_config)
            tqdm.write(f"wrote {model_dir}")
        distributed.barrier(self.info)
        return model_dir


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

