"""The claims study's report (`mbt.avdigits.claims`): tables with 95% intervals, the claims decided by paired
comparisons over seeds and clips, the paper's figure at AV-Digits scale. Everything is computed from the runs' rows (<out>/runs/*/row.json),
so `--report-only` rebuilds it from the committed runs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.stats import decide, mean_ci, paired_difference

MODES = ("same", "pair")  # AV-Digits modes of the study

BOTH = "audio+video"
MARGIN = 0.01  # "matches": at most 1 point worse
CHANCE_BAND = 0.05  # late fusion "at chance" on the match label: its interval ends less than 5 points above 50%
COLOURS = {"vanilla": "#DD8452", "bottleneck": "#4C72B0", "late": "#8172B3", "video": "#55A868", "audio": "#C44E52"}


def bits(x: np.ndarray) -> str:
    """(N,) bool -> '0101...' (a row's per-clip results, compact in JSON); `unbits` reads it back."""
    return "".join("1" if v else "0" for v in x)


def unbits(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), dtype=np.uint8) == ord("1")


class Grid:
    """The finished runs, by (mode, name) and seed."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows
        self.by: dict[tuple[str, str], dict[int, dict]] = {}
        for r in rows:
            self.by.setdefault((r["mode"], r["name"]), {})[r["seed"]] = r

    def has(self, mode: str, name: str) -> bool:
        return (mode, name) in self.by

    def has_mode(self, mode: str) -> bool:
        return any(m == mode for m, _ in self.by)

    def seeds(self, mode: str, name: str) -> list[int]:
        return sorted(self.by.get((mode, name), {}))

    def values(self, mode: str, name: str, condition: str = BOTH, head: str = "top1") -> list[float]:
        return [r["results"][condition][head] for _, r in sorted(self.by.get((mode, name), {}).items())
                if condition in r["results"]]

    def clips(self, mode: str, name: str, seeds: list[int], condition: str = BOTH, head: str = "top1") -> np.ndarray:
        """(S, N) per-clip correctness (1.0 / 0.0) of the given seeds."""
        return np.stack([unbits(self.by[mode, name][s]["correct"][condition][head]) for s in seeds]).astype(float)

    def shares(self, mode: str, name: str, seeds: list[int], key: str) -> np.ndarray:
        """(S, K) per-clip localisation shares ('rgb', 'spectrogram', 'rgb_chance', ...)."""
        return np.stack([np.asarray(self.by[mode, name][s]["localisation"][key], dtype=float) for s in seeds])

    def row(self, mode: str, name: str) -> dict:
        return next(iter(self.by[mode, name].values()))


def ci_text(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """'84.2 [82.1, 86.3]' (mean and 95% t interval over seeds), '84.2' for one seed, '—' for none."""
    if not values:
        return "—"
    m, lo, hi = mean_ci(values)
    if math.isnan(lo):
        return f"{scale * m:.{digits}f}"
    return f"{scale * m:.{digits}f} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def compare(grid: Grid, a: tuple[str, str, str, str], b: tuple[str, str, str, str] | float, threshold: float = 0.0
            ) -> dict[str, Any] | None:
    """Paired comparison (mbt.analysis.stats.paired_difference) of run cell a minus cell b (or minus a constant,
    e.g. chance) over their common seeds and every test clip. a, b: (mode, name, condition, head). None when a cell
    has no run."""
    if not grid.has(*a[:2]) or (not isinstance(b, float) and not grid.has(*b[:2])):
        return None
    seeds = grid.seeds(*a[:2]) if isinstance(b, float) else sorted(set(grid.seeds(*a[:2])) & set(grid.seeds(*b[:2])))
    if not seeds:
        return None
    x = grid.clips(a[0], a[1], seeds, a[2], a[3])
    y = np.full_like(x, b) if isinstance(b, float) else grid.clips(b[0], b[1], seeds, b[2], b[3])
    c = paired_difference(x, y)
    return {"a": a, "b": b, "threshold": threshold, "decision": decide(c, threshold), **c.as_dict()}


def compare_shares(grid: Grid, a: tuple[str, str], b: tuple[str, str] | None, key: str) -> dict[str, Any] | None:
    """Paired comparison of the localisation share `key` of cell a minus cell b (b None: minus the chance share)."""
    if not grid.has(*a) or (b is not None and not grid.has(*b)):
        return None
    seeds = grid.seeds(*a) if b is None else sorted(set(grid.seeds(*a)) & set(grid.seeds(*b)))
    seeds = [s for s in seeds if "localisation" in grid.by[a][s]
             and (b is None or "localisation" in grid.by[b][s])]
    if not seeds:
        return None
    x = grid.shares(*a, seeds, key)
    y = grid.shares(*a, seeds, f"{key}_chance") if b is None else grid.shares(*b, seeds, key)
    c = paired_difference(x, y)
    return {"a": a, "b": b or "chance", "key": key, "threshold": 0.0, "decision": decide(c, 0.0), **c.as_dict()}


def _diff(c: dict | None, scale: float = 100.0) -> str:
    if c is None:
        return "— (not run)"
    return (f"{scale * c['difference']:+.1f} [{scale * c['low']:+.1f}, {scale * c['high']:+.1f}] "
            f"({c['seeds']} seeds x {c['clips']} clips)")


def _overall(decisions: list[str | None]) -> str:
    """All comparisons of a claim (None: not run): 'no' if any is no; 'yes' if every one ran and is yes; else 'not
    resolved' (saying how many ran when some did not)."""
    ran = [d for d in decisions if d is not None]
    if not ran:
        return "not run"
    if any(d == "no" for d in ran):
        return "no"
    if len(ran) < len(decisions):
        return f"not resolved ({len(ran)} of {len(decisions)} comparisons run)"
    if all(d == "yes" for d in ran):
        return "yes"
    return "not resolved"


def claims(grid: Grid, L: int, mid: int, counts: list[int]) -> list[dict[str, Any]]:
    """The six claims, each with its comparisons and its decision."""
    out = []
    cmp = lambda a, b, t=0.0: compare(grid, a, b, t)  # noqa: E731
    S = lambda n, cond=BOTH: ("same", n, cond, "top1")  # noqa: E731

    # (1) fusion beats the best single stream: each fusion model against both single-stream models (no choice of
    # the best after the fact: beating both is beating the best)
    parts = []
    for name in [f"bottleneck@{mid}", f"vanilla@{mid}", "late"]:
        for single in ("audio", "video"):
            parts.append((f"{name} (audio+video) vs {single} model", cmp(S(name), S(single, single))))
    out.append({"claim": "1. Fusing audio and video beats the best single stream", "parts": parts})

    # (2) mid fusion beats early and late
    parts = []
    for kind in ("bottleneck", "vanilla"):
        parts.append((f"{kind}@{mid} vs {kind}@0 (early)", cmp(S(f"{kind}@{mid}"), S(f"{kind}@0"))))
        parts.append((f"{kind}@{mid} vs late", cmp(S(f"{kind}@{mid}"), S("late"))))
    out.append({"claim": "2. Mid fusion beats early and late fusion", "parts": parts})

    # (3) bottleneck matches or beats vanilla, at lower cost, at every fusion layer
    parts = []
    for l in range(L):
        c = cmp(S(f"bottleneck@{l}"), S(f"vanilla@{l}"), -MARGIN)
        if c is not None:
            gb, gv = grid.row("same", f"bottleneck@{l}")["gflops"], grid.row("same", f"vanilla@{l}")["gflops"]
            c["gflops"] = (gb, gv)
            if gb >= gv:
                c["decision"] = "no"
        parts.append((f"bottleneck@{l} vs vanilla@{l} (>= -1 point; cheaper)", c))
    for l in range(L):
        c = compare(grid, ("pair", f"bottleneck@{l}", BOTH, "match"), ("pair", f"vanilla@{l}", BOTH, "match"),
                    -MARGIN)
        parts.append((f"pair match: bottleneck@{l} vs vanilla@{l} (>= -1 point)", c))
    out.append({"claim": "3. Bottleneck fusion matches or beats vanilla cross-attention at lower cost, at every "
                         "fusion layer", "parts": parts})

    # (4) the robust model holds the single-stream scores with a stream missing
    parts = [("robust, video removed vs audio model (>= -1 point)", cmp(S("robust", "audio"), S("audio", "audio"),
                                                                       -MARGIN)),
             ("robust, audio removed vs video model (>= -1 point)", cmp(S("robust", "video"), S("video", "video"),
                                                                       -MARGIN)),
             (f"robust, both streams vs bottleneck@{mid} (>= -1 point)", cmp(S("robust"), S(f"bottleneck@{mid}"),
                                                                             -MARGIN))]
    out.append({"claim": "4. The robust model keeps the single-stream scores when a stream is missing",
                "parts": parts})

    # (5) pair: only cross-modal fusion learns the match label; the bottleneck count it needs
    late = compare(grid, ("pair", "late", BOTH, "match"), 0.5, CHANCE_BAND)
    if late is not None:  # late fusion cannot compare the streams: the part holds when it stays near chance
        late["decision"] = {"yes": "no", "no": "yes"}.get(late["decision"], late["decision"])
    learners = []
    for name in [f"{k}@{l}" for l in range(L) for k in ("vanilla", "bottleneck")] + \
            [f"bottleneck@{mid}x{n}" for n in counts if n != 4]:
        learners.append((f"pair match: {name} vs chance (50%)", compare(grid, ("pair", name, BOTH, "match"), 0.5)))
    out.append({"claim": "5. In `pair`, only cross-modal fusion learns the match label (late fusion cannot)",
                "parts": [(f"pair match: late fusion stays within {100 * CHANCE_BAND:.0f} points of chance", late)]
                + learners,
                "rule": f"late fusion's interval ends under chance + {100 * CHANCE_BAND:.0f} points, and at least "
                        "one cross-modal model's lies above chance; each cross-modal line says which learn it"})

    # (6) attention falls on the source; bottleneck fusion localises it more tightly than vanilla
    parts = []
    for key, what in (("rgb", "frames: share inside the digit's box"),
                      ("spectrogram", "spectrogram: share inside the word's span")):
        for name in (f"bottleneck@{mid}", f"vanilla@{mid}"):
            parts.append((f"{what}, {name} vs chance", compare_shares(grid, ("same", name), None, key)))
        for l in range(L):
            parts.append((f"{what}, bottleneck@{l} vs vanilla@{l}",
                          compare_shares(grid, ("same", f"bottleneck@{l}"), ("same", f"vanilla@{l}"), key)))
    out.append({"claim": "6. Attention falls on the source, and bottleneck fusion localises it more tightly than "
                         "vanilla", "parts": parts})
    for c in out:
        decisions = [comp["decision"] if comp is not None else None for _, comp in c["parts"]]
        if c["claim"].startswith("5."):
            late_d, learn = decisions[0], [d for d in decisions[1:] if d is not None]
            # the claim needs late fusion at chance and some cross-modal model above it
            learnt = "yes" if "yes" in learn else None if not learn else "no" if all(
                d == "no" for d in learn) else "not resolved"
            c["decision"] = _overall([late_d, learnt])
        else:
            c["decision"] = _overall(decisions)
    return out


def _scratch_rows(path: Path) -> list[dict]:
    f = path / "results.json"
    if not f.is_file():
        return []
    return json.loads(f.read_text()).get("rows", [])


def _values(rows: list[dict[str, Any]], field: str) -> str:
    """The values of a row field, as '3000' or '3000/8000' (a study whose runs differ in it)."""
    return "/".join(f"{v:g}" for v in sorted({r[field] for r in rows}))


def _encoders_text(pre: list[dict[str, Any]], fine: list[dict[str, Any]]) -> str:
    if pre:
        return (f"Encoders: {_values(pre, 'epochs')} epochs from scratch on the `same` training split "
                f"({_values(pre, 'train_clips')} clips).")
    # a study fine-tuned from another one's encoders (--encoders): name where they are
    where = sorted({str(Path(p).parent.parent.parent) for r in fine for p in r.get("init", {}).values()})
    return f"Encoders: those of {', '.join(where) or 'another study'} (not trained here)."


def study_commands(study: dict[str, Any]) -> list[str]:
    """The training commands recorded in study.json (its 'commands' list; a single 'command' in older studies)."""
    return list(study.get("commands") or ([study["command"]] if "command" in study else []))


def report(out: Path, rows: list[dict[str, Any]], model: dict[str, Any], mid: int, scratch_dir: str | None,
           study: dict[str, Any]) -> Path:
    """README.md (tables, claims, figure), claims.png and results.json in `out`, from the runs' rows alone (and the
    from-scratch study in `scratch_dir`); `study`: the command and machine of the invocations that trained."""
    L = model["num_layers"]
    grid = Grid(rows)
    counts = sorted({r["change"].get("n_bottlenecks", 4) for r in rows if r["name"].startswith("bottleneck")} | {4})
    scratch = _scratch_rows(Path(scratch_dir)) if scratch_dir else []
    found = claims(grid, L, mid, counts)
    seeds = sorted({r["seed"] for r in rows})
    pre = [r for r in rows if r["pretrain"]]
    fine = [r for r in rows if not r["pretrain"]]
    lines = [
        "# The paper's claims on AV-Digits, in the paper's regime",
        "",
        "Commands, in the order they ran (one process per core; `--report-only` rebuilds this page from the runs):",
        "",
        *[f"    {c}" for c in study_commands(study) or ["python -m mbt.avdigits.claims"]],
        "",
        f"Machine: {study.get('machine', 'not recorded')}; {len(rows)} runs, "
        f"{sum(r['train_seconds'] for r in rows) / 60:.0f} min of training and "
        f"{sum(r.get('eval_seconds', 0) for r in rows) / 60:.0f} min of scoring, summed over the processes.",
        "",
        f"Model: {L} layers, width {model['hidden_size']}, {model['num_heads']} heads, {model['classifier']} "
        f"classifier. {_encoders_text(pre, fine)} Fusion models: fine-tuned from the seed's two encoders, "
        + "; ".join(f"`{m}` on {_values(rs, 'train_clips')} training clips for {_values(rs, 'epochs')} epochs at "
                    f"peak rate {_values(rs, 'lr')}" for m in MODES if (rs := [r for r in fine if r['mode'] == m]))
        + f". Test: {_values(rows, 'test_clips')} clips with unseen digit images and voices. Seeds: "
        f"{', '.join(map(str, seeds))}. Cells: mean [95% t interval over seeds], test %. From scratch: "
        + (f"the models of [{scratch_dir}]({os.path.relpath(scratch_dir, out)}/README.md)" if scratch else "none") + ".",
        "",
    ]
    lines += _same_table(grid, L, mid, counts, scratch)
    lines += _pair_table(grid, L, mid, counts, scratch)
    lines += _localisation_table(grid, L, mid)
    lines += ["## The claims", "",
              "Each comparison pairs the two cells' runs seed by seed and clip by clip (the same seeds, the same test "
              "clips): the mean difference in points and its 95% interval, which holds both the spread between "
              "seeds (retraining) and between clips (another test set) (`mbt.analysis.stats.paired_difference`: "
              "two-way random effects, Student's t with Satterthwaite's degrees of freedom, so about t(2) = 4.3 "
              "when 3 seeds' spread dominates). *yes* when the interval lies above the threshold (0, or -1 point for "
              "'matches'), *no* when it lies below, *not resolved* when it straddles it. A claim is *yes* when "
              "every comparison is, *no* when one is *no*.", ""]
    for c in found:
        lines += [f"### {c['claim']}: **{c['decision']}**", ""]
        if c.get("rule"):
            lines += [f"Decided by: {c['rule']}.", ""]
        lines += ["| comparison | difference (points) | decision |", "|---|---|---|"]
        for text, comp in c["parts"]:
            extra = ""
            if comp is not None and "gflops" in comp:
                extra = f"; GFLOPs {comp['gflops'][0]:.3f} vs {comp['gflops'][1]:.3f}"
            lines.append(f"| {text} | {_diff(comp)}{extra} | {comp['decision'] if comp else '—'} |")
        lines.append("")
    figure(out / "claims.png", grid, L, mid, counts)
    lines += ["![claims](claims.png)", ""]
    summary = out / "summary.md"  # written by hand after reading the numbers; kept when the report is rebuilt
    if summary.is_file():
        lines += [summary.read_text()]
    cells = []
    for (mode, name), runs in sorted(grid.by.items()):
        for cond in sorted({c for r in runs.values() for c in r["results"]}):
            for head in sorted({h for r in runs.values() for h in r["results"].get(cond, {})}):
                m, lo, hi = mean_ci(grid.values(mode, name, cond, head))
                cells.append({"mode": mode, "name": name, "condition": cond, "head": head, "mean": m,
                              "low": None if math.isnan(lo) else lo, "high": None if math.isnan(hi) else hi,
                              "seeds": grid.seeds(mode, name)})
    (out / "results.json").write_text(json.dumps(
        {"model": model, "mid": mid, "study": study, "cells": cells,
         "claims": [{"claim": c["claim"], "decision": c["decision"], "parts": [[t, p] for t, p in c["parts"]]}
                    for c in found]}, indent=1, default=str) + "\n")
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path


def _fusion_names(L: int, mid: int, counts: list[int]) -> list[str]:
    names = ["late"]
    for l in range(L):
        names += [f"vanilla@{l}", f"bottleneck@{l}"]
    return names + [f"bottleneck@{mid}x{n}" for n in counts if n != 4]


def _scratch_cell(scratch: list[dict], mode: str, name: str, head: str) -> str:
    vals = [r["results"][BOTH][head] for r in scratch if r["mode"] == mode and r["name"] == name
            and BOTH in r["results"]]
    return ci_text(vals) if vals else "—"


def _same_table(grid: Grid, L: int, mid: int, counts: list[int], scratch: list[dict]) -> list[str]:
    if not grid.has_mode("same"):
        return []  # a study of `pair` alone (e.g. a bigger budget from another study's encoders)
    lines = ["## same: the spoken digit is the shown digit (10 classes, test top-1 %)", "",
             "| model | fusion layer | bottlenecks | audio+video | video only | audio only | from scratch "
             "(audio+video) | GFLOPs | seeds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ["video", "audio"] + _fusion_names(L, mid, counts) + ["robust"]:
        if not grid.has("same", name):
            continue
        r0 = grid.row("same", name)
        ch = r0["change"]
        layer = "—" if r0["pretrain"] else str(ch.get("fusion_layer"))
        nb = str(ch.get("n_bottlenecks", "—")) if ch.get("use_bottleneck") else "—"
        if r0["pretrain"]:
            cells = ["—", ci_text(grid.values("same", name, "video")), ci_text(grid.values("same", name, "audio"))]
            s = [r["results"][name]["top1"] for r in scratch if r["mode"] == "same" and r["name"] == name]
            scr = ci_text(s) if s else "—"
        else:
            cells = [ci_text(grid.values("same", name, c)) for c in (BOTH, "video", "audio")]
            scr = _scratch_cell(scratch, "same", name, "top1")
        lines.append(f"| {name} | {layer} | {nb} | {' | '.join(cells)} | {scr} | {r0['gflops']:.3f} | "
                     f"{len(grid.seeds('same', name))} |")
    return lines + [""]


def _pair_table(grid: Grid, L: int, mid: int, counts: list[int], scratch: list[dict]) -> list[str]:
    names = [n for n in _fusion_names(L, mid, counts) if grid.has("pair", n)]
    if not names:
        return []
    lines = ["## pair: shown and spoken digits may differ (test top-1 % per head; match is balanced, chance 50)", "",
             "| model | fusion layer | bottlenecks | match | shown digit | spoken digit | from scratch (match) | "
             "GFLOPs | seeds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in names:
        r0 = grid.row("pair", name)
        ch = r0["change"]
        nb = str(ch.get("n_bottlenecks", "—")) if ch.get("use_bottleneck") else "—"
        cells = [ci_text(grid.values("pair", name, BOTH, h)) for h in ("match", "shown", "spoken")]
        lines.append(f"| {name} | {ch.get('fusion_layer')} | {nb} | {' | '.join(cells)} | "
                     f"{_scratch_cell(scratch, 'pair', name, 'match')} | {r0['gflops']:.3f} | "
                     f"{len(grid.seeds('pair', name))} |")
    return lines + [""]


def _loc_values(grid: Grid, name: str, key: str) -> list[float]:
    return [float(np.mean(r["localisation"][key])) for _, r in sorted(grid.by.get(("same", name), {}).items())
            if "localisation" in r]


def _localisation_table(grid: Grid, L: int, mid: int) -> list[str]:
    names = [n for n in ["late"] + [f"{k}@{l}" for l in range(L) for k in ("vanilla", "bottleneck")]
             + sorted(n for m, n in grid.by if m == "same" and "x" in n) + ["robust"]
             if grid.has("same", n) and _loc_values(grid, n, "rgb")]
    if not names:
        return []
    lines = ["## Where the attention falls (same, attention rollout over the test clips)", "",
             "The share of each stream's rollout relevance (Abnar and Zuidema; `mbt explain`'s maps) inside the "
             "digit's box in the frames and inside the spoken word's span in the spectrogram, averaged over the "
             "test clips; 'chance' is what a uniform map scores (the box's area share, the span's time share).", "",
             "| model | frames: in the box | chance | spectrogram: in the span | chance | seeds |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in names:
        cells = [ci_text(_loc_values(grid, name, k)) for k in ("rgb", "rgb_chance", "spectrogram",
                                                                "spectrogram_chance")]
        lines.append(f"| {name} | {' | '.join(cells)} | {len(_loc_values(grid, name, 'rgb'))} |")
    return lines + [""]


def _errorbar(ax, xs, name_of, grid: Grid, mode: str, condition: str, head: str, colour: str, label: str,
              value=None, fmt: str = "o-"):
    pts, ms, errs = [], [], [[], []]
    for x in xs:
        vals = value(name_of(x)) if value else grid.values(mode, name_of(x), condition, head)
        if not vals:
            continue
        m, lo, hi = mean_ci(vals)
        pts.append(x)
        ms.append(100 * m)
        errs[0].append(0 if math.isnan(lo) else 100 * (m - lo))
        errs[1].append(0 if math.isnan(hi) else 100 * (hi - m))
    if pts:
        ax.errorbar(pts, ms, yerr=errs, fmt=fmt, color=colour, label=label, capsize=3)


def figure(path: Path, grid: Grid, L: int, mid: int, counts: list[int]) -> None:
    """The paper's Fig. 3 and 4 at AV-Digits scale: accuracy (95% intervals) and GFLOPs against the fusion layer for
    vanilla and bottleneck fusion (late fusion at L), the bottleneck count at the mid layer; same and pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    layer_name = lambda kind: (lambda x: "late" if x == L else f"{kind}@{x}")  # noqa: E731
    for row, (mode, head, ylabel) in enumerate((("same", "top1", "same: test top-1 (%)"),
                                                ("pair", "match", "pair: match accuracy (%)"))):
        ax = axes[row, 0]
        for kind in ("vanilla", "bottleneck"):
            _errorbar(ax, range(L + 1), layer_name(kind), grid, mode, BOTH, head, COLOURS[kind], kind)
        if mode == "same":
            for name, style in (("video", ":"), ("audio", "--")):
                vals = grid.values("same", name, name)
                if vals:
                    ax.axhline(100 * np.mean(vals), color=COLOURS[name], linestyle=style, label=f"{name} only")
        else:
            ax.axhline(50, color="grey", linestyle=":", label="chance")
        ax.set_xticks(range(L + 1), [str(l) for l in range(L)] + [f"{L}\n(late)"])
        ax.set_xlabel("fusion layer")
        ax.set_ylabel(ylabel)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax = axes[row, 2]
        for kind, name_of in (("bottleneck", lambda n: f"bottleneck@{mid}" if n == 4 else f"bottleneck@{mid}x{n}"),):
            _errorbar(ax, counts, name_of, grid, mode, BOTH, head, COLOURS[kind], f"bottleneck@{mid}")
        vals = grid.values(mode, f"vanilla@{mid}", BOTH, head)
        if vals:
            ax.axhline(100 * np.mean(vals), color=COLOURS["vanilla"], linestyle="--", label=f"vanilla@{mid}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.set_xlabel("bottleneck tokens")
        ax.set_ylabel(ylabel)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax = axes[0, 1]
    cost_mode = "same" if grid.has_mode("same") else "pair"  # the cost is the model's, not the data's
    for kind in ("vanilla", "bottleneck"):
        xs = [x for x in range(L + 1) if grid.has(cost_mode, layer_name(kind)(x))]
        ax.plot(xs, [grid.row(cost_mode, layer_name(kind)(x))["gflops"] for x in xs], "o-", color=COLOURS[kind],
                label=kind)
    ax.set_xticks(range(L + 1), [str(l) for l in range(L)] + [f"{L}\n(late)"])
    ax.set_xlabel("fusion layer")
    ax.set_ylabel("GFLOPs per clip (mbt flops)")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    for kind in ("vanilla", "bottleneck"):
        for key, style in (("rgb", "o-"), ("spectrogram", "s--")):
            _errorbar(ax, range(L + 1), layer_name(kind), grid, "same", BOTH, "", COLOURS[kind],
                      f"{kind}, {'frames' if key == 'rgb' else 'spectrogram'}",
                      value=lambda n, key=key: _loc_values(grid, n, key), fmt=style)
    for key, style in (("rgb", ":"), ("spectrogram", "--")):
        chance = [v for (m, n) in grid.by if m == "same" for v in _loc_values(grid, n, f"{key}_chance")]
        if chance:
            ax.axhline(100 * float(np.mean(chance)), color="grey", linestyle=style,
                       label=f"chance, {'frames' if key == 'rgb' else 'spectrogram'}")
    ax.set_xticks(range(L + 1), [str(l) for l in range(L)] + [f"{L}\n(late)"])
    ax.set_xlabel("fusion layer")
    ax.set_ylabel("same: relevance inside the source (%)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_visible(False)  # a study of one mode has no curves for the other
    fig.suptitle("AV-Digits, fine-tuned from single-modality encoders: accuracy, cost and localisation against "
                 "fusion layer and bottleneck count (95% intervals over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
