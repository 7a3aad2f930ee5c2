"""The claims study: the MBT paper's claims tested on AV-Digits in the paper's regime, with confidence intervals
and paired comparisons.

The regime. Each stream starts from a single-modality encoder trained beforehand, as the paper starts both from
ImageNet ViT: here the `video` and `audio` models of the AV-Digits `same` training split (from scratch, the `mbt
demo` recipe), which are also the study's single-stream baselines. Every fusion model is then fine-tuned from the
two encoders of its seed (`--init-from`) with one recipe (AdamW, warm-up and cosine, `--finetune-epochs` at peak
rate `--finetune-lr`), for both modes; the `pair` models start from the same encoders (a new multi-head head).

The grid, for every seed (the same seeds for every configuration):
  video, audio                         the single-modality encoders (same mode; scored alone)
  late                                 no cross-modal attention (fusion_layer = L)
  vanilla@l, bottleneck@l  l = 0..L-1  cross-attention / bottleneck fusion from layer l (4 bottleneck tokens)
  bottleneck@{mid}x{n}                 n bottleneck tokens at fusion layer `mid` (default L/2, the paper's mid fusion,
                                       fixed before any run: the study has no validation split to choose it on)
  robust (same mode)                   bottleneck@{mid} with modality dropout (`mbt demo`'s fusion model)
in the modes `same` (10 classes) and `pair` (heads match / shown / spoken). Each run is scored on every test clip
(with each stream removed too, in `same`), and the per-clip results are kept, so that every claim is decided by a
paired comparison over seeds and clips (`mbt.analysis.stats.paired_difference`). Fusion runs of `same` also get the attention-rollout
localisation (`mbt.analysis.localisation`): the share of the relevance inside the digit's box and the word's span.

    python -m mbt.avdigits.claims --out docs/results/claims            # the grid; run it once per core, in parallel
    python -m mbt.avdigits.claims --out docs/results/claims --report-only
    python -m mbt.avdigits.claims --out /tmp/claims --quick            # a smoke run of the script (minutes)
    python -m mbt.avdigits.claims --out docs/results/claims/pair-8000 --encoders docs/results/claims \
        --modes pair --train-clips 8000 --finetune-epochs 15 --only late vanilla@2 bottleneck@2
                                                                       # a bigger `pair` budget, from the main
                                                                       # study's encoders (docs/results/claims/pair-8000)

Runs that finished are reused (<out>/runs/<run>/row.json; a finished run made with other settings is refused, not
mixed in); a run being trained is locked (an flock on <out>/runs/<run>.lock, which the kernel drops if its process
dies), so processes started with the same command share the grid between them; a fine-tuning run waits for its
seed's encoders, and an encoder whose weights are gone is made again (deterministically) while a run needs it. (`python benchmarks/claims_study.py` runs the
same.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..analysis.flops import flop_count, parameter_count
from ..data.annotations import read_annotations
from ..data.config import DataConfig, load_pretrained
from ..data.datasets import VideoDataset
from ..engine.evaluate import predict_conditions
from ..engine.trainer import train
from ..models.mbt import MBT
from ..models.pretrained import atomic_write
from . import generator as avdigits
from .claims_report import MODES, bits, report, study_commands
from .demo import (DEMO_MODEL, FINETUNE_LR, FINETUNE_SHARE, MODALITY_DROPOUT, TINY_MODEL, TRAIN_LR,
                   UNIMODAL_RUNS as UNIMODAL, avdigits_run_config, machine, spectrogram_stats, streams, weights_kept)

# The fine-tuning recipe of every fusion model is the demo's (chosen on a validation set in the robustness benchmark,
# see docs/results/robustness): a quarter of the encoders' epochs at a quarter of their peak learning rate.
COUNTS = (1, 4, 16)  # bottleneck tokens at the mid fusion layer
LOCK_WAIT_SECONDS = 10.0
LOCALISATION_CLIPS = 300
SCRATCH = "docs/results/avdigits"  # the from-scratch study (benchmarks/avdigits_study.py) shown beside this one


@dataclasses.dataclass(frozen=True)
class Run:
    """One cell of the grid for one seed. `change`: the study model's fields this run changes; `augment`: data
    augmentation it adds; `pretrain`: a single-modality encoder trained from scratch (else fine-tuned from them)."""

    mode: str
    name: str
    seed: int
    change: tuple[tuple[str, Any], ...] = ()
    augment: tuple[tuple[str, float], ...] = ()
    pretrain: bool = False

    @property
    def key(self) -> str:
        return f"{self.mode}-{self.name.replace('@', '-')}-seed{self.seed}"

    def depends_on(self) -> list[str]:
        """The runs that must have finished first: a fine-tuning run needs its seed's two encoders."""
        return [] if self.pretrain else [f"same-{n}-seed{self.seed}" for n in UNIMODAL.values()]


def cells(mode: str, L: int, mid: int, counts: tuple[int, ...] = COUNTS) -> list[tuple[str, dict, dict, bool]]:
    """(name, model changes, augment, pretrain) of every cell of a mode, in the order they are trained: the paper's
    model and its closest rivals first, so that a grid cut short still answers the main claims."""
    out: list[tuple[str, dict, dict, bool]] = []
    if mode == "same":
        out += [("video", {"modality_fusion": ["rgb"]}, {}, True),
                ("audio", {"modality_fusion": ["spectrogram"]}, {}, True)]
    layers = [mid] + [l for l in range(L) if l != mid]
    out.append((f"bottleneck@{mid}", {"fusion_layer": mid, "use_bottleneck": True, "n_bottlenecks": 4}, {}, False))
    out.append((f"vanilla@{mid}", {"fusion_layer": mid, "use_bottleneck": False}, {}, False))
    out.append(("late", {"fusion_layer": L, "use_bottleneck": False}, {}, False))
    if mode == "same":
        out.append(("robust", {"fusion_layer": mid, "use_bottleneck": True, "n_bottlenecks": 4},
                    dict(MODALITY_DROPOUT), False))
    for l in layers[1:]:
        out.append((f"bottleneck@{l}", {"fusion_layer": l, "use_bottleneck": True, "n_bottlenecks": 4}, {}, False))
        out.append((f"vanilla@{l}", {"fusion_layer": l, "use_bottleneck": False}, {}, False))
    for n in counts:
        if n != 4:
            out.append((f"bottleneck@{mid}x{n}", {"fusion_layer": mid, "use_bottleneck": True, "n_bottlenecks": n},
                        {}, False))
    return out


def grid(modes: list[str], seeds: list[int], L: int, mid: int, counts: tuple[int, ...] = COUNTS,
         only: list[str] | None = None, encoders: bool = True) -> list[Run]:
    """Every run, in the order a process takes them: the encoders of every seed, then each cell for every seed
    (cell by cell, so that a cut-short grid has whole cells). `only`: just these cells (and the encoders);
    `encoders=False`: no encoders (the fine-tuning runs take them from another study, see --encoders)."""
    runs = [Run("same", n, s, tuple(sorted(c.items())), (), True) for s in seeds
            for n, c, _, pre in cells("same", L, mid, counts) if pre and encoders]
    for mode in modes:
        for name, change, augment, pre in cells(mode, L, mid, counts):
            if not pre and (only is None or name in only):
                runs += [Run(mode, name, s, tuple(sorted(change.items())), tuple(sorted(augment.items())))
                         for s in seeds]
    return runs


# ------------------------------------------------------------------------------------------------ sharing the grid
class Lock:
    """An exclusive, non-blocking lock on the file `path` (fcntl.flock), held until `release()` or the end of the
    process: the kernel drops it when its holder dies, so a killed run leaves nothing to clean up. The file itself
    stays (git-ignored); its content only says who holds it, for a reader."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        import fcntl

        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def write_atomic(path: Path, text: str) -> None:
    """Write `path` whole or not at all (another process may read it at any moment)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _finished(run: Run, runs_dir: Path) -> bool:
    return (runs_dir / run.key / "row.json").is_file()


def next_run(plan: list[Run], runs_dir: Path) -> tuple[Run | None, Lock | None, bool]:
    """(the first run that is not finished, not being trained by another process and whose encoders are ready;
    the lock this process now holds on it; whether any run is still unfinished)."""
    done = {r.key for r in plan if _finished(r, runs_dir)}
    # An encoder whose weights are gone (they are not committed) is made again while a run still needs it: its
    # training is deterministic, so the fine-tuning runs start from the same weights as before.
    needed = {d for r in plan if r.key not in done for d in r.depends_on()}
    done -= {k for k in needed & done if not weights_kept(runs_dir / k)}
    pending = [r for r in plan if r.key not in done]
    planned = {r.key for r in plan}  # encoders outside the plan come from another study (checked by `main`)
    for r in pending:
        if not all(d in done for d in r.depends_on() if d in planned):
            continue
        lock = Lock(runs_dir / f"{r.key}.lock")
        if not lock.acquire():
            continue
        if _finished(r, runs_dir) and (not r.pretrain or weights_kept(runs_dir / r.key)):
            lock.release()  # finished by another process between the listing and the lock
            continue
        return r, lock, True
    return None, None, bool(pending)


def settings(run: Run, args: argparse.Namespace, model: dict[str, Any]) -> dict[str, Any]:
    """What a run's row must agree with to be reused by this invocation (see `check_reuse`)."""
    out = {"study_model": model, "epochs": float(args.epochs if run.pretrain else args.finetune_epochs),
           "lr": TRAIN_LR if run.pretrain else args.finetune_lr, "train_clips": args.train_clips,
           "test_clips": args.test_clips, "change": dict(run.change), "augment": dict(run.augment)}
    if getattr(args, "encoders", None) and not run.pretrain:
        out["encoders"] = args.encoders  # fine-tuned from another study's encoders
    return out


def check_reuse(plan: list[Run], runs_dir: Path, args: argparse.Namespace, model: dict[str, Any]) -> list[str]:
    """The finished runs of `plan` whose settings differ from this invocation's (they would be reused and mixed
    with runs made otherwise): 'key: field was X, now Y' lines."""
    bad = []
    for r in plan:
        f = runs_dir / r.key / ("row.json" if _finished(r, runs_dir) else "trained.json")
        if not f.is_file():
            continue
        row = json.loads(f.read_text())
        if "settings" not in row and f.name == "trained.json":
            continue  # an encoder brought in from elsewhere (its row checks it once scored)
        have = row.get("settings", row)
        for k, v in settings(r, args, model).items():
            if k in have and json.dumps(have[k], sort_keys=True) != json.dumps(v, sort_keys=True):
                bad.append(f"{r.key}: {k} was {have[k]!r}, now {v!r}")
    return bad


# ------------------------------------------------------------------------------------------------ one run
def per_clip(logits: torch.Tensor, labels: torch.Tensor, heads: dict[str, int] | None) -> dict[str, np.ndarray]:
    """{head: (N,) bool}: whether each clip's top-1 is right, for each head (single-label: 'top1')."""
    spans = heads or {"top1": logits.shape[1]}
    out, lo = {}, 0
    for head, size in spans.items():
        out[head] = (logits[:, lo:lo + size].argmax(1) == labels[:, lo:lo + size].argmax(1)).numpy()
        lo += size
    return out


def score_clips(model: MBT, data_config: DataConfig, test_csv: Path, mode: str, cache: dict) -> dict[str, Any]:
    """Score every test clip with the model's streams (and, for a `same` fusion model, with each one alone).
    Returns {'results': {condition: {head: accuracy}}, 'correct': {condition: {head: '0101...'}}}; condition names
    as the reports ('audio+video', 'video', 'audio')."""
    ann = read_annotations(test_csv, labels=list(model.config.label_names))
    full = tuple(model.config.modality_fusion)
    conditions = [full] + ([(m,) for m in full] if len(full) > 1 and mode == "same" else [])
    data = VideoDataset(ann, data_config, split="test", cache=cache, on_error="raise")
    logits, labels, index, _ = predict_conditions(model, data, torch.device("cpu"), conditions, batch_size=64,
                                                  progress=False)
    if len(index) != len(ann.records):
        raise RuntimeError(f"{test_csv}: {len(index)} of {len(ann.records)} clips scored")
    results, correct = {}, {}
    for c in conditions:
        hits = per_clip(logits[c], labels, model.config.heads)
        results[streams(c)] = {h: float(v.mean()) for h, v in hits.items()}
        correct[streams(c)] = {h: bits(v) for h, v in hits.items()}
    return {"results": results, "correct": correct}


def encoders_dir(out: Path, args: argparse.Namespace) -> Path:
    """The runs folder that holds the single-modality encoders: this study's, or --encoders' (another study's)."""
    return Path(args.encoders) / "runs" if args.encoders else out / "runs"


def encoder_run(runs: Path, stream: str, seed: int) -> Path:
    """The run folder of a seed's single-modality encoder for `stream` ('rgb' or 'spectrogram') in `runs`."""
    return runs / f"same-{UNIMODAL[stream]}-seed{seed}"


def read_study(out: Path) -> dict[str, Any]:
    """<out>/study.json (the training commands, machine and from-scratch study), or {} before the first run."""
    f = out / "study.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def encoder_stats(runs: Path, seeds: list[int]) -> tuple[float, float]:
    """The spectrogram normalisation of the audio encoders in `runs` (a pretrained model's statistics go with it;
    every seed's encoder was made with the same ones)."""
    found = set()
    for s in seeds:
        f = encoder_run(runs, "spectrogram", s) / "model" / "preprocessor_config.json"
        front_end = json.loads(f.read_text())["front_end"]
        found.add((front_end["mean"], front_end["std"]))
    if len(found) != 1:
        raise ValueError(f"the audio encoders in {runs} were made with different spectrogram statistics: {found}")
    return found.pop()


def execute(run: Run, out: Path, data_dirs: dict[str, Path], model: dict[str, Any], stats: tuple[float, float],
            args: argparse.Namespace, caches: dict[str, dict]) -> dict[str, Any]:
    """Train and score one run into <out>/runs/<key>; returns (and writes) its row."""
    runs = out / "runs"
    run_dir = runs / run.key
    trained = run_dir / "trained.json"  # written when training ends: a run stopped while scoring is not retrained
    if run_dir.exists() and not (trained.is_file() and weights_kept(run_dir)):
        shutil.rmtree(run_dir)  # an unfinished attempt
    change = dict(run.change)
    wanted = settings(run, args, model)
    cfg = avdigits_run_config(data_dirs[run.mode], run_dir, model={**model, **change}, epochs=wanted["epochs"],
                              lr=wanted["lr"], seed=run.seed, spec_stats=stats, progress=False)
    cfg.data["augment"].update(wanted["augment"])
    if not run.pretrain:
        for m in UNIMODAL:
            setattr(cfg.init, m, str(encoder_run(encoders_dir(out, args), m, run.seed) / "model"))
    train_only = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, test=None))
    cache = caches.setdefault(run.mode, {})
    if trained.is_file():
        model_dir, train_seconds = run_dir / "model", json.loads(trained.read_text())["train_seconds"]
    else:
        t0 = time.perf_counter()
        model_dir = train(train_only, cache=cache)
        train_seconds = time.perf_counter() - t0
        write_atomic(trained, json.dumps({"train_seconds": train_seconds, "settings": wanted}) + "\n")
    t1 = time.perf_counter()
    row: dict[str, Any] = {"mode": run.mode, "name": run.name, "seed": run.seed, "change": change,
                           "study_model": model, "mid": args.mid_layer,
                           "augment": dict(run.augment), "pretrain": run.pretrain, "epochs": float(cfg.optim.epochs),
                           "lr": cfg.optim.lr, "train_clips": args.train_clips, "test_clips": args.test_clips,
                           "init": {m: getattr(cfg.init, m) for m in UNIMODAL if getattr(cfg.init, m)},
                           "train_seconds": train_seconds}
    fused, data_config = load_pretrained(model_dir)
    row.update(score_clips(fused, data_config, Path(cfg.dataset.test.annotations), run.mode, cache))
    row.update(params=parameter_count(fused.config), **flop_count(fused.config))
    if run.mode == "same" and len(fused.config.modality_fusion) > 1 and not args.no_localisation:
        from ..analysis.localisation import localisation

        loc = localisation(fused, data_config, data_dirs[run.mode], split="test", limit=args.localisation_clips)
        row["localisation"] = {k: [round(float(x), 5) for x in v] for k, v in loc.items() if k not in ("files", "frames")}
    row["eval_seconds"] = time.perf_counter() - t1
    for f in (run_dir / "checkpoints").glob("*.pt"):
        f.unlink()  # the study needs the scores, not the training state
    if not run.pretrain and not args.keep_weights:
        for f in run_dir.rglob("*.safetensors"):
            f.unlink()  # the encoders are kept: they start the fine-tuning runs (git-ignored)
    row["settings"] = wanted
    write_atomic(run_dir / "row.json", json.dumps(row) + "\n")
    return row


# ------------------------------------------------------------------------------------------------ the command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/results/claims")
    p.add_argument("--data-root", default="avdigits-study-data", help="where the two datasets are generated")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-clips", type=int, default=3000)
    p.add_argument("--test-clips", type=int, default=1000)
    p.add_argument("--epochs", type=float, default=20, help="the single-modality encoders' epochs (from scratch)")
    p.add_argument("--finetune-epochs", type=float, default=None,
                   help=f"the fusion models' epochs (default: {FINETUNE_SHARE:g} x --epochs, as mbt demo)")
    p.add_argument("--finetune-lr", type=float, default=FINETUNE_LR)
    p.add_argument("--counts", type=int, nargs="+", default=list(COUNTS), help="bottleneck counts at the mid layer")
    p.add_argument("--mid", type=int, default=None, help="the mid fusion layer (default L/2)")
    p.add_argument("--localisation-clips", type=int, default=LOCALISATION_CLIPS,
                   help="the first N test clips are used for the localisation (default: %(default)s; it decodes "
                        "them again, as the rollout records what was read)")
    p.add_argument("--no-localisation", action="store_true")
    p.add_argument("--only", nargs="+", default=None, metavar="CELL",
                   help="train only these cells (e.g. bottleneck@2 late; the encoders are always made)")
    p.add_argument("--encoders", default=None, metavar="STUDY",
                   help="fine-tune from the encoders of another claims study (its --out; their weights must be "
                        "there) instead of training them here: e.g. a bigger `pair` budget in its own --out, from "
                        "the main study's encoders")
    p.add_argument("--keep-weights", action="store_true",
                   help="keep the fine-tuned models' weights (by default only the encoders' are kept; weights are "
                        "git-ignored), e.g. to score them on a validation set or explain them")
    p.add_argument("--scratch", default=None,
                   help=f"the from-scratch study whose runs are shown beside these (its results.json; 'none': no "
                        f"column); recorded in <out>/study.json, so later reports use it (default: the recorded "
                        f"one, else {SCRATCH})")
    p.add_argument("--quick", action="store_true", help="tiny model, 200 clips, 1 epoch: checks the script only")
    p.add_argument("--report-only", action="store_true", help="no training: the report from the finished runs")
    args = p.parse_args(argv)
    model = TINY_MODEL if args.quick else DEMO_MODEL
    if args.quick:
        args.train_clips, args.test_clips, args.epochs, args.finetune_epochs = 200, 100, 1, args.finetune_epochs or 1
        args.seeds = args.seeds[:2]
    if args.finetune_epochs is None:
        args.finetune_epochs = FINETUNE_SHARE * args.epochs
    L = model["num_layers"]
    mid = args.mid_layer = args.mid if args.mid is not None else L // 2
    if not 0 < mid < L:
        p.error(f"--mid {mid}: the mid fusion layer must lie in 1..{L - 1} (0 is early fusion, {L} late)")
    if args.only:
        known = {n for mode in args.modes for n, _, _, pre in cells(mode, L, mid, tuple(args.counts)) if not pre}
        if set(args.only) - known:
            p.error(f"--only: unknown fusion cell(s) {sorted(set(args.only) - known)}; the cells are "
                    f"{sorted(known)} (the encoders are always made)")
    out = Path(args.out)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        plan = grid(args.modes, args.seeds, L, mid, tuple(args.counts), args.only, encoders=not args.encoders)
        if args.encoders:
            missing = [str(d) for s in args.seeds for m in UNIMODAL
                       if not weights_kept(d := encoder_run(encoders_dir(out, args), m, s))]
            if missing:
                p.error(f"--encoders {args.encoders}: no encoder weights in {', '.join(missing)}; run that study "
                        "for these seeds first (an encoder whose weights are gone is made again by it)")
        bad = check_reuse(plan, runs_dir, args, model)
        if bad:
            print(f"{runs_dir} holds finished runs made with other settings than this invocation's; use another "
                  "--out, or the same options as before:\n  " + "\n  ".join(bad[:10]), file=sys.stderr)
            return 1
        # Every invocation that trains is recorded (a study grown with more seeds or cells has several)
        command = "python -m mbt.avdigits.claims " + shlex.join(sys.argv[1:] if argv is None else argv)
        before = read_study(out)
        commands = [c for c in study_commands(before) if c != command] + [command]
        study = {**before, "commands": commands, "machine": machine()}
        study.pop("command", None)  # an older study's single command, now the first of `commands`
        write_atomic(out / "study.json", json.dumps(study, indent=1) + "\n")
        data_dirs = {}
        for mode in sorted(set(args.modes) | (set() if args.encoders else {"same"})):  # encoders train on `same`
            data_dirs[mode] = Path(args.data_root) / (mode if not args.quick else f"{mode}-quick")
            _generate_once(mode, args.train_clips, args.test_clips, data_dirs[mode])
        # One normalisation for every run: the encoders' (the `same` training split), as a pretrained model's
        # statistics go with it.
        stats = encoder_stats(encoders_dir(out, args), args.seeds) if args.encoders else \
            spectrogram_stats(data_dirs["same"], model, progress=False)
        caches: dict[str, dict] = {}
        while True:
            run, lock, unfinished = next_run(plan, runs_dir)
            if run is None:
                if not unfinished:
                    break
                time.sleep(LOCK_WAIT_SECONDS)  # the rest is being trained by other processes, or waits for them
                continue
            try:
                print(f"== {run.key} ({time.strftime('%H:%M:%S')})", flush=True)
                row = execute(run, out, data_dirs, model, stats, args, caches)
                print(f"   {json.dumps(row['results'])} in {row['train_seconds'] / 60:.1f} min", flush=True)
            finally:
                lock.release()
    rows = [json.loads(f.read_text()) for f in sorted(runs_dir.glob("*/row.json"))]
    if not rows:
        print(f"no finished runs in {runs_dir}", file=sys.stderr)
        return 1
    # The report describes the runs, whatever this invocation's options (--report-only needs no --quick)
    for field in ("study_model", "mid", "test_clips"):
        values = {json.dumps(r[field], sort_keys=True) for r in rows}
        if len(values) > 1:
            print(f"the runs in {runs_dir} differ in {field} ({sorted(values)}); report them from separate --out "
                  "folders", file=sys.stderr)
            return 1
    lock = Lock(out / ".report.lock")  # processes that end together write the report one after the other
    while not lock.acquire():
        time.sleep(1.0)
    try:
        study = read_study(out)
        if args.scratch is not None and args.scratch != study.get("scratch", SCRATCH):
            study["scratch"] = args.scratch  # a page rebuilt later shows the same column
            write_atomic(out / "study.json", json.dumps(study, indent=1) + "\n")
        scratch = study.get("scratch", SCRATCH)
        report(out, rows, rows[0]["study_model"], rows[0]["mid"], None if scratch == "none" else scratch, study)
    finally:
        lock.release()
    return 0


def _generate_once(mode: str, train_clips: int, test_clips: int, data_dir: Path) -> None:
    """Generate the dataset; processes started together make it once (the others wait for its manifest)."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = Lock(data_dir.parent / f".{data_dir.name}.lock")
    while not lock.acquire():
        time.sleep(LOCK_WAIT_SECONDS)
    try:
        avdigits.generate(avdigits.AVDigitsConfig(mode=mode, train_clips=train_clips, test_clips=test_clips),
                          data_dir, progress=False)
    finally:
        lock.release()


if __name__ == "__main__":
    raise SystemExit(main())
