"""The AV-Digits study: fusion type and fusion layer against accuracy and GFLOPs (the paper's Fig. 3 and 4, in
miniature, on a CPU).

On the same data, recipe and budget it trains, for each mode:
  late        no cross-modal attention (fusion_layer = L; per-modality logits averaged);
  vanilla@l   full cross-attention between the two streams' tokens from layer l (early l=0, mid l=L/2);
  bottleneck@l  fusion through n_bottlenecks shared tokens from layer l;
  video, audio  (same mode) the single-modality baselines;
with several seeds, and writes a table (markdown + JSON) and plots of accuracy and GFLOPs against fusion layer.

    python -m mbt.avdigits.study --out docs/results/avdigits            # the committed results
    python -m mbt.avdigits.study --quick --out /tmp/study               # a smoke run (minutes)

(`python benchmarks/avdigits_study.py` runs the same.)

Runs that finished are reused when the script is started again (their rows are in <out>/runs/*/row.json). Two
invocations can share --out (say one per mode, each on one core); `--report-only` then writes the table and plots
from every finished run, whatever invocation made it, without training.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from ..models.config import STREAM
from . import generator as avdigits
from .demo import DEMO_MODEL, TINY_MODEL, avdigits_run_config, machine, spectrogram_stats, train_and_evaluate


def runs_for(mode: str, L: int, layers: list[int]) -> list[tuple[str, dict]]:
    """(name, model changes) of every run of a mode."""
    runs = [("late", {"fusion_layer": L, "use_bottleneck": False})]
    for l in layers:
        if l < L:
            runs.append((f"vanilla@{l}", {"fusion_layer": l, "use_bottleneck": False}))
            runs.append((f"bottleneck@{l}", {"fusion_layer": l, "use_bottleneck": True}))
    if mode == "same":
        runs += [("video", {"modality_fusion": ["rgb"]}), ("audio", {"modality_fusion": ["spectrogram"]})]
    return runs


def in_run_order(rows: list[dict], modes: list[str], L: int) -> list[dict]:
    """`rows` in the order the runs are made (runs_for, per mode), then by seed."""
    layers = sorted({r["fusion_layer"] for r in rows if r["name"].startswith(("vanilla@", "bottleneck@"))})
    rank = {(m, name): i for m in modes for i, (name, _) in enumerate(runs_for(m, L, layers))}
    return sorted(rows, key=lambda r: (modes.index(r["mode"]), rank[r["mode"], r["name"]], r["seed"]))


def metric_of(mode: str) -> str:
    return "top1" if mode == "same" else "match"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/results/avdigits")
    p.add_argument("--data-root", default="avdigits-study-data", help="where the two datasets are generated")
    p.add_argument("--modes", nargs="+", default=["same", "pair"], choices=["same", "pair"])
    p.add_argument("--train-clips", type=int, default=3000)
    p.add_argument("--test-clips", type=int, default=1000)
    p.add_argument("--epochs", type=float, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--layers", type=int, nargs="+", default=None, help="fusion layers (default: 0, L/2)")
    p.add_argument("--quick", action="store_true", help="tiny model, 200 clips, 1 epoch: checks the script only")
    p.add_argument("--report-only", action="store_true",
                   help="no training: the table and plots from the finished runs in --out (all their seeds)")
    args = p.parse_args(argv)
    model = TINY_MODEL if args.quick else DEMO_MODEL
    if args.quick:
        args.train_clips, args.test_clips, args.epochs = 200, 100, 1
    L = model["num_layers"]
    layers = args.layers if args.layers is not None else [0, L // 2]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows: list[dict] = []
    if args.report_only:
        for f in sorted((out / "runs").glob("*/row.json")):
            row = json.loads(f.read_text())
            if row["mode"] not in args.modes:
                continue
            if "epochs" not in row:
                print(f"{f} has no 'epochs' (an older study made it); delete {f.parent} and run it again",
                      file=sys.stderr)
                return 1
            rows.append(row)
        if not rows:
            print(f"no finished runs in {out / 'runs'} for modes {args.modes}", file=sys.stderr)
            return 1
        rows = in_run_order(rows, args.modes, L)
        args.seeds = sorted({r["seed"] for r in rows})
        # The budget line of the report comes from the runs themselves, not from this invocation's defaults.
        budgets = {(float(r["epochs"]), r["train_clips"], r["test_clips"]) for r in rows}
        if len(budgets) > 1:
            print(f"the runs in {out / 'runs'} were trained with different budgets (epochs, train clips, test "
                  f"clips): {sorted(budgets)}; report them from separate --out folders", file=sys.stderr)
            return 1
        args.epochs, args.train_clips, args.test_clips = budgets.pop()
        report(out, rows, model, args, time.perf_counter() - t0)
        return 0
    for mode in args.modes:
        data_dir = Path(args.data_root) / mode
        avdigits.generate(avdigits.AVDigitsConfig(mode=mode, train_clips=args.train_clips, test_clips=args.test_clips),
                          data_dir)
        stats = spectrogram_stats(data_dir, model)
        cache: dict = {}  # decoded clips of this mode's dataset, shared by its runs
        for name, change in runs_for(mode, L, layers):
            for seed in args.seeds:
                run_dir = out / "runs" / f"{mode}-{name.replace('@', '-')}-seed{seed}"
                row_file = run_dir / "row.json"
                if row_file.is_file():
                    row = json.loads(row_file.read_text())
                else:
                    if run_dir.exists():
                        import shutil

                        shutil.rmtree(run_dir)
                    print(f"== {mode} {name} seed {seed}", flush=True)
                    cfg = avdigits_run_config(data_dir, run_dir, model={**model, **change}, epochs=args.epochs,
                                              seed=seed, spec_stats=stats)
                    row = train_and_evaluate(cfg, cache)
                    row.update(mode=mode, name=name, seed=seed, epochs=args.epochs, train_clips=args.train_clips,
                               test_clips=args.test_clips,
                               fusion_layer=change.get("fusion_layer", model["fusion_layer"]),
                               use_bottleneck=change.get("use_bottleneck", model["use_bottleneck"]))
                    row_file.write_text(json.dumps(row, indent=2) + "\n")
                    # The weights are not needed for the table; keep the run folder small.
                    for f in run_dir.rglob("*.safetensors"):
                        f.unlink()
                    for f in (run_dir / "checkpoints").glob("*.pt"):
                        f.unlink()
                rows.append(row)
    report(out, rows, model, args, time.perf_counter() - t0)
    return 0


def _summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def report(out: Path, rows: list[dict], model: dict, args, seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = model["num_layers"]
    (out / "results.json").write_text(json.dumps({"model": model, "args": vars(args), "rows": rows}, indent=2) + "\n")
    lines = [
        "# AV-Digits study: fusion type and layer against accuracy and GFLOPs",
        "",
        f"Command: `python -m mbt.avdigits.study {shlex.join(sys.argv[1:])}`",
        "",
        f"Machine: {machine()}; {seconds / 60:.0f} min in this invocation (finished runs are reused); "
        f"{sum(r['train_seconds'] for r in rows) / 60:.0f} min of training over the {len(rows)} runs.",
        "",
        f"Model: {L} layers, width {model['hidden_size']}, {model['num_heads']} heads, {model['n_bottlenecks']} "
        f"bottleneck tokens, {model['classifier']} classifier, from scratch; {args.epochs:g} epochs of "
        f"{args.train_clips} clips (the `mbt demo` recipe: AdamW, warm-up and cosine); test on {args.test_clips} "
        "clips with unseen digit images and voices. "
        f"Seeds: {', '.join(map(str, args.seeds))}; a cell with several seeds is mean ± standard deviation.",
        "",
    ]
    for mode in args.modes:
        mrows = [r for r in rows if r["mode"] == mode]
        if not mrows:
            continue
        names = list(dict.fromkeys(r["name"] for r in mrows))
        if mode == "same":
            lines += ["## same: the spoken digit is the shown digit (10 classes, test top-1 %)", "",
                      "| model | fusion layer | audio+video | video only | audio only | GFLOPs | MACs (G) | seeds |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
        else:
            lines += ["## pair: shown and spoken digits may differ (test top-1 % per head; match is balanced, "
                      "chance 50)", "",
                      "| model | fusion layer | match | shown digit | spoken digit | GFLOPs | MACs (G) | seeds |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name in names:
            rs = [r for r in mrows if r["name"] == name]
            r0 = rs[0]
            layer = "—" if name in ("video", "audio") else str(r0["fusion_layer"])
            if mode == "same":
                cells = []
                for c in ("audio+video", "video", "audio"):
                    vals = [r["results"][c]["top1"] for r in rs if c in r["results"]]
                    cells.append(_summary(vals) if vals else "—")
            else:
                cells = [_summary([r["results"]["audio+video"][h] for r in rs]) for h in ("match", "shown", "spoken")]
            lines.append(f"| {name} | {layer} | {' | '.join(cells)} | {r0['gflops']:.3f} | {r0['gmacs']:.3f} "
                         f"| {len(rs)} |")
        lines.append("")
        # Plots: accuracy and GFLOPs against fusion layer, vanilla and bottleneck, late fusion at layer L.
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        key = metric_of(mode)
        for kind, colour in (("vanilla", "#DD8452"), ("bottleneck", "#4C72B0")):
            pts = sorted({r["fusion_layer"] for r in mrows if r["name"].startswith(kind)})
            late = [r for r in mrows if r["name"] == "late"]
            xs = pts + [L]
            acc = [statistics.mean(r["results"]["audio+video"][key] for r in mrows
                                   if r["name"] == f"{kind}@{x}") for x in pts]
            acc.append(statistics.mean(r["results"]["audio+video"][key] for r in late))
            fl = [next(r["gflops"] for r in mrows if r["name"] == f"{kind}@{x}") for x in pts] + [late[0]["gflops"]]
            axes[0].plot(xs, [100 * a for a in acc], "o-", color=colour, label=kind)
            axes[1].plot(xs, fl, "o-", color=colour, label=kind)
        for name, style in (("video", ":"), ("audio", "--")):
            vals = [r["results"][STREAM["rgb" if name == "video" else "spectrogram"]]["top1"]
                    for r in mrows if r["name"] == name]
            if vals:
                axes[0].axhline(100 * statistics.mean(vals), color="grey", linestyle=style, label=f"{name} only")
        axes[0].set_xlabel("fusion layer (L = late fusion)")
        axes[0].set_ylabel(f"test {'top-1' if mode == 'same' else 'match accuracy'} (%)")
        axes[1].set_xlabel("fusion layer (L = late fusion)")
        axes[1].set_ylabel("GFLOPs per clip")
        for ax in axes:
            ax.set_xticks(range(L + 1))
            ax.legend(fontsize=8)
        fig.suptitle(f"AV-Digits ({mode})")
        fig.tight_layout()
        fig.savefig(out / f"{mode}.png", dpi=120)
        plt.close(fig)
        lines += [f"![{mode}]({mode}.png)", ""]
    (out / "README.md").write_text("\n".join(lines))
    print(f"wrote {out / 'README.md'}")


if __name__ == "__main__":
    raise SystemExit(main())
