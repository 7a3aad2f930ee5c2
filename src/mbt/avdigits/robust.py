"""The robustness benchmark: does a fusion model trained with modality dropout keep the single-stream scores when a
stream is missing, without losing its two-stream score?

On AV-Digits `same` at the `mbt demo` budget it trains, for each seed, the demo's fusion model (`mbt`), the same
model with modality dropout (`mbt-robust`: data.augment.rgb_drop_prob and spectrogram_drop_prob), and the two
single-modality models (`video`, `audio`), then scores every test clip with both streams and with each stream
removed. The targets (issue: robustness) are checked per seed and on the means:

  1. with one stream removed, mbt-robust >= the single-modality model of the remaining stream - 1 point;
  2. with both streams, mbt-robust >= mbt - 1 point.

    python -m mbt.avdigits.robust --out docs/results/robustness --seeds 0 1 2     # the committed results
    python -m mbt.avdigits.robust --out /tmp/r --quick                            # a smoke run (a minute)

(`python benchmarks/robustness_study.py` runs the same.) Finished runs are reused (<out>/runs/*/row.json); several
invocations may share --out (one per core, e.g. one per seed), and `--report-only` writes the table from all of them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from . import generator as avdigits
from .demo import (DEMO_MODEL, FINETUNE_LR, MODALITY_DROPOUT, TINY_MODEL, TRAIN_LR, UNIMODAL_RUNS as UNIMODAL,
                   avdigits_run_config, machine, spectrogram_stats, train_and_evaluate, weights_kept)

MODELS = {  # name -> (model changes, augment changes); the order in which they are trained
    "video": ({"modality_fusion": ["rgb"]}, {}),
    "audio": ({"modality_fusion": ["spectrogram"]}, {}),
    "mbt": ({}, {}),
    "mbt-robust": ({}, None),  # None: the modality dropout of --drop-prob
    # the paper's regime: each stream from the seed's single-modality model, fine-tuned with modality dropout
    "mbt-robust-init": ({}, None),
}
CONDITIONS = ("audio+video", "video", "audio")  # both streams, audio removed, video removed


def run_config(data_dir: Path, run_dir: Path, name: str, model: dict, epochs: float, seed: int,
               stats: tuple[float, float], drop_prob: float, init_epochs: float = 5.0, init_lr: float | None = None):
    """The demo's run config for one model of the benchmark (mbt-robust: with modality dropout; mbt-robust-init:
    also each stream from the same seed's single-modality model, for `init_epochs` at peak rate `init_lr`)."""
    change, augment = MODELS[name]
    fine_tune = name == "mbt-robust-init"
    lr = {"lr": init_lr} if fine_tune and init_lr is not None else {}
    cfg = avdigits_run_config(data_dir, run_dir, model={**model, **change},
                              epochs=init_epochs if fine_tune else epochs, seed=seed,
                              spec_stats=stats, progress=False, **lr)
    if augment is None:
        cfg.data["augment"].update(rgb_drop_prob=drop_prob, spectrogram_drop_prob=drop_prob)
    if name == "mbt-robust-init":
        runs = run_dir.parent
        for m, source in UNIMODAL.items():
            setattr(cfg.init, m, str(runs / f"{source}-seed{seed}" / "model"))
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/results/robustness")
    p.add_argument("--data-dir", default="avdigits-study-data/same", help="AV-Digits `same` (made if missing)")
    p.add_argument("--train-clips", type=int, default=3000)
    p.add_argument("--test-clips", type=int, default=1000)
    p.add_argument("--epochs", type=float, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--drop-prob", type=float, default=MODALITY_DROPOUT["rgb_drop_prob"],
                   help="mbt-robust: each stream's dropout probability (default: 0.25, so half the clips train "
                        "with one stream)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--init-epochs", type=float, default=5.0,
                   help="mbt-robust-init: epochs of fine-tuning from the single-modality models (default: 5)")
    p.add_argument("--init-lr", type=float, default=FINETUNE_LR,
                   help="mbt-robust-init: the peak learning rate of the fine-tuning (default: the demo's, %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny model, 200 clips, 1 epoch: checks the script only")
    p.add_argument("--report-only", action="store_true", help="no training: the report from the finished runs")
    args = p.parse_args(argv)
    model = TINY_MODEL if args.quick else DEMO_MODEL
    if args.quick:
        args.train_clips, args.test_clips, args.epochs = 200, 100, 1
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not args.report_only:
        data_dir = Path(args.data_dir)
        avdigits.generate(avdigits.AVDigitsConfig(mode="same", train_clips=args.train_clips,
                                                  test_clips=args.test_clips), data_dir)
        stats = spectrogram_stats(data_dir, model, progress=False)
        cache: dict = {}
        for seed in args.seeds:
            needs_init = "mbt-robust-init" in args.models and not (
                out / "runs" / f"mbt-robust-init-seed{seed}" / "row.json").is_file()
            for name in [n for n in MODELS if n in args.models or (needs_init and n in UNIMODAL.values())]:
                run_dir = out / "runs" / f"{name}-seed{seed}"
                done = (run_dir / "row.json").is_file()
                if done and not (needs_init and name in UNIMODAL.values() and not weights_kept(run_dir)):
                    continue  # finished (a single-modality model that must start mbt-robust-init keeps its weights)
                if run_dir.exists():
                    shutil.rmtree(run_dir)
                print(f"== {name} seed {seed}", flush=True)
                cfg = run_config(data_dir, run_dir, name, model, args.epochs, seed, stats, args.drop_prob,
                                 args.init_epochs, args.init_lr)
                row = train_and_evaluate(cfg, cache, progress=False)
                row.update(name=name, seed=seed, epochs=float(cfg.optim.epochs), train_clips=args.train_clips,
                           test_clips=args.test_clips,
                           drop_prob=args.drop_prob if name.startswith("mbt-robust") else 0.0, lr=cfg.optim.lr,
                           init={m: getattr(cfg.init, m) for m in UNIMODAL if getattr(cfg.init, m)})
                (run_dir / "row.json").write_text(json.dumps(row, indent=2) + "\n")
                for f in (run_dir / "checkpoints").glob("*.pt"):
                    f.unlink()  # the table needs the scores, not the checkpoints
                if name not in UNIMODAL.values():  # the single-modality weights start mbt-robust-init (git-ignored)
                    for f in run_dir.rglob("*.safetensors"):
                        f.unlink()
    rows = [json.loads(f.read_text()) for f in sorted((out / "runs").glob("*/row.json"))]
    if not rows:
        print(f"no finished runs in {out / 'runs'}", file=sys.stderr)
        return 1
    report(out, rows, model, time.perf_counter() - t0)
    return 0


def _cell(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def score(rows: list[dict], name: str, condition: str, seed: int | None = None) -> list[float]:
    return [r["results"][condition]["top1"] for r in rows if r["name"] == name and condition in r["results"]
            and (seed is None or r["seed"] == seed)]


def targets(rows: list[dict]) -> list[dict[str, Any]]:
    """The two targets for each robust model, per seed and on the means (over the seeds both models have):
    {'model', 'target', 'seed', 'robust', 'reference', 'margin', 'holds'}."""
    checks = [("video only >= video model - 1", "video", "video", "video"),
              ("audio only >= audio model - 1", "audio", "audio", "audio"),
              ("both streams >= mbt - 1", "audio+video", "mbt", "audio+video")]
    out = []
    for robust_name in ("mbt-robust", "mbt-robust-init"):
        for text, condition, ref_name, ref_condition in checks:
            seeds = sorted({r["seed"] for r in rows if r["name"] == robust_name}
                           & {r["seed"] for r in rows if r["name"] == ref_name})
            for seed in seeds + ([None] if seeds else []):
                pick = seeds if seed is None else [seed]
                robust = [v for s_ in pick for v in score(rows, robust_name, condition, s_)]
                ref = [v for s_ in pick for v in score(rows, ref_name, ref_condition, s_)]
                a, b = statistics.mean(robust), statistics.mean(ref)
                out.append({"model": robust_name, "target": text, "seed": "mean" if seed is None else seed,
                            "robust": a, "reference": b, "margin": a - b, "holds": a >= b - 0.01 - 1e-9})
    return out


def report(out: Path, rows: list[dict], model: dict, seconds: float) -> Path:
    seeds = sorted({r["seed"] for r in rows})
    drop = sorted({r["drop_prob"] for r in rows if r["name"].startswith("mbt-robust")})
    budgets = sorted({(r["epochs"], r["train_clips"], r["test_clips"]) for r in rows
                      if r["name"] != "mbt-robust-init"})
    lines = ["# Robustness to a missing stream: modality dropout on AV-Digits", "",
             f"Command: `python -m mbt.avdigits.robust {shlex.join(sys.argv[1:])}`", "",
             f"Machine: {machine()}; {seconds / 60:.0f} min in this invocation (finished runs are reused); "
             f"{sum(r['train_seconds'] for r in rows) / 60:.0f} min of training over the {len(rows)} runs.", "",
             f"Budget (epochs, train clips, test clips): {budgets}; the `mbt demo` model and recipe (from scratch, "
             f"{model['num_layers']} layers of width {model['hidden_size']}, bottleneck fusion from layer "
             f"{model['fusion_layer']}). `mbt-robust` is the same with modality dropout p = {drop} per stream "
             "(data.augment.rgb_drop_prob = spectrogram_drop_prob; at most one stream per clip). "
             "`mbt-robust-init` starts each stream from the same seed's `video` and `audio` models (`--init-from`, "
             f"the paper's regime) and is fine-tuned with the same modality dropout for "
             f"{sorted({r['epochs'] for r in rows if r['name'] == 'mbt-robust-init'}) or '-'} epochs at peak rate "
             f"{sorted({r.get('lr', TRAIN_LR) for r in rows if r['name'] == 'mbt-robust-init'}) or '-'}. Seeds: "
             f"{', '.join(map(str, seeds))}; cells are mean ± standard deviation over seeds (test top-1 %).", "",
             "| model | audio+video | video only (audio removed) | audio only (video removed) | seeds |",
             "|---|---:|---:|---:|---:|"]
    for name in MODELS:
        if any(r["name"] == name for r in rows):
            lines.append(f"| {name} | " + " | ".join(_cell(score(rows, name, c)) for c in CONDITIONS)
                         + f" | {len({r['seed'] for r in rows if r['name'] == name})} |")
    checks = targets(rows)
    lines += ["", "## Targets", "", "| model | target | seed | robust model | reference | margin (points) | holds |",
              "|---|---|---|---:|---:|---:|---|"]
    lines += [f"| {c['model']} | {c['target']} | {c['seed']} | {100 * c['robust']:.1f} | {100 * c['reference']:.1f} | "
              f"{100 * c['margin']:+.1f} | {'yes' if c['holds'] else 'no'} |" for c in checks]
    (out / "results.json").write_text(json.dumps({"model": model, "rows": rows, "targets": checks}, indent=2) + "\n")
    summary = out / "summary.md"  # what the numbers show, written by hand; kept when the report is rebuilt
    if summary.is_file():
        lines += ["", summary.read_text().rstrip()]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path


if __name__ == "__main__":
    sys.exit(main())
