"""Compute of one clip's forward pass: multiply-adds, FLOPs and parameters, and the sweep over fusion layers.

What is counted: `torch.utils.flop_counter.FlopCounterMode` on the meta device (no memory, no time), which counts
matrix multiplies, i.e. the patch/tubelet embedding, the attention projections, QK^T and AV, the MLP, pre_logits and
the classifier. Norms, softmax, GELU, bias additions, residual additions and pooling are not counted.

Units, named so they cannot be mixed up:
  gmacs   billions of multiply-adds. This is what Scenic *logs* as `gflops`: its `compute_flops` reads XLA's cost
          analysis and divides it by 2 (`fuse_multiply_add=True`), so a multiply-add counts once.
  gflops  billions of FLOPs, 2 per multiply-add (the usual convention; XLA's raw cost analysis).

Against the official model: for MBT-B/16x2 on AudioSet inputs (gap head, 4 bottlenecks, 527 classes) XLA's cost
analysis gives 985.1 GFLOPs (bottleneck fusion at layer 8) and 984.3 (late fusion), element-wise ops included;
the matmul count here is 977.5 and 976.7 GFLOPs, 0.78% less (the element-wise ops). tests/analysis/test_flops.py
checks this.

Vanilla fusion with separate weights: our model computes queries and the MLP only for each modality's own tokens
(same result as Scenic, about half the cost at early fusion). `count_flops(..., scenic_vanilla_schedule=True)` and
the 'vanilla-scenic' rows of `sweep` count Scenic's literal schedule (each modality's block over all tokens).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..errors import ConfigError, InputError
from ..models.config import MODALITIES, PRESETS, MBTConfig
from ..models.mbt import MBT, fusion_plan
from ..models.pretrained import CONFIG_NAME

# The fallback when a run config leaves num_classes to the training annotations: AudioSet's 527 classes (also the
# default of MBTConfig and of the mbt-b16x2 preset).
DEFAULT_NUM_CLASSES = 527

# Fusion types of a sweep row, in the order the table and the plot show them.
FUSION_TYPES = ("bottleneck", "vanilla", "vanilla-scenic")

# Table columns: (row key, header, format).
COLUMNS = (
    ("fusion", "fusion", "{}"),
    ("fusion_layer", "fusion layer", "{}"),
    ("gmacs", "GMACs (multiply-adds)", "{:.2f}|{:.4f}"),  # the second below 1 (small models)
    ("gflops", "GFLOPs (2/MAC)", "{:.2f}|{:.4f}"),
    ("params_m", "params (M)", "{:.2f}"),
)


# ---------------------------------------------------------------------------------------------------- config input
def load_config(source: str | Path | MBTConfig, num_classes: int | None = None) -> tuple[MBTConfig, list[str]]:
    """The MBTConfig described by `source`, and notes on how it was obtained (to show a user).

    `source` is one of:
      * a model directory (its config.json; the weights are not read), or a config.json file;
      * a run config YAML (configs/*.yaml): its `model` section. num_classes usually comes from the training
        annotations and is absent from the YAML; then `num_classes` or DEFAULT_NUM_CLASSES (527) is used;
      * a preset name (see mbt.PRESETS, e.g. 'mbt-b16x2');
      * an MBTConfig.
    `num_classes`, if given, replaces the config's (it changes only the classifier's cost).
    """
    notes: list[str] = []
    if isinstance(source, MBTConfig):
        config = source
    else:
        path = Path(source)
        if path.is_dir():
            config = MBTConfig.from_json_file(path / CONFIG_NAME)
            notes.append(f"model directory {path} ({CONFIG_NAME}; weights not read)")
        elif path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
            from ..engine.config import RunConfig

            run = RunConfig.from_yaml(path)
            if run.model.get("num_classes") is None:
                n = num_classes or DEFAULT_NUM_CLASSES
                config = run.model_config(num_classes=n)
                if num_classes is None:
                    notes.append(f"num_classes is not in {path} (training takes it from the annotations): "
                                 f"using {n}; set it with --num-classes")
            else:
                config = run.model_config()
            notes.append(f"run config {path} (its model section)")
        elif path.is_file():
            config = MBTConfig.from_json_file(path)
            notes.append(f"config file {path}")
        elif str(source) in PRESETS:
            config = MBTConfig.from_preset(str(source))
            notes.append(f"preset {source}")
        else:
            raise ConfigError(f"{source}: not a model directory, a config.json, a run config (.yaml) or a preset "
                              f"name (presets: {sorted(PRESETS)})")
    if num_classes is not None and num_classes != config.num_classes:
        config = config.replace(num_classes=num_classes, label_names=None, heads=None,
                                problem_type=None if config.problem_type == "multi_head" else config.problem_type)
        notes.append(f"num_classes set to {num_classes}")
    return config, notes


def describe(config: MBTConfig) -> str:
    """One line: modalities, depth and width, fusion, head, classes, and the input shapes."""
    mods = config.modality_fusion
    shapes = ", ".join(f"{m} {'x'.join(map(str, config.input_shape(m)))} ({config.num_tokens(m)} tokens)"
                       for m in mods)
    return (f"{'+'.join(mods)}, {config.num_layers} layers x {config.hidden_size} wide, {config.describe_fusion()}, "
            f"{config.classifier} head, {config.num_classes} classes; inputs {shapes}")


# ---------------------------------------------------------------------------------------------------- counting
def parameter_count(config: MBTConfig) -> int:
    """Parameters of the model `config` describes (built on the meta device)."""
    with torch.device("meta"):
        model = MBT(config)
    return sum(p.numel() for p in model.parameters())


def count_flops(config: MBTConfig, modalities: Sequence[str] | None = None,
                scenic_vanilla_schedule: bool = False) -> dict[str, Any]:
    """Multiply-adds, FLOPs and parameters of one clip's forward pass (eval mode, batch 1).

    Args:
      config: the model.
      modalities: the modalities given at inference (default: all of the model's); a fusion model run on one of
        them fuses nothing.
      scenic_vanilla_schedule: count Scenic's literal vanilla schedule (`MBT.scenic_vanilla_schedule`).
    Returns: {'macs': multiply-adds, 'flops': 2 * macs, 'gmacs', 'gflops' (the same in billions),
      'params', 'params_m' (millions), 'modalities', 'tokens' ({modality: tokens})}. Only matmuls are counted (see
      the module docstring).
    """
    from torch.utils.flop_counter import FlopCounterMode

    present = config.select_modalities(modalities)
    with torch.device("meta"):
        model = MBT(config).eval()
        model.scenic_vanilla_schedule = scenic_vanilla_schedule
        inputs = {m: torch.empty(1, *config.input_shape(m)) for m in present}
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(inputs)
    flops = int(counter.get_total_flops())
    params = sum(p.numel() for p in model.parameters())
    return {"macs": flops // 2, "flops": flops, "gmacs": flops / 2e9, "gflops": flops / 1e9, "params": params,
            "params_m": params / 1e6, "modalities": present, "tokens": {m: config.num_tokens(m) for m in present}}


def flop_count(model_config: MBTConfig, modalities: Sequence[str] | None = None) -> dict[str, float]:
    """{'gmacs', 'gflops'} of one clip's forward pass (the demo report's columns; see `count_flops`)."""
    c = count_flops(model_config, modalities)
    return {"gmacs": c["gmacs"], "gflops": c["gflops"]}


def sweep(config: MBTConfig, modalities: Sequence[str] | None = None,
          scenic_schedule: bool = True) -> list[dict[str, Any]]:
    """Counts for every fusion layer 0..num_layers (num_layers = late fusion) and each fusion type.

    Rows (dicts with the keys of `count_flops` plus 'fusion' and 'fusion_layer'), by layer then type:
      'bottleneck'      use_bottleneck=True (n_bottlenecks of `config`, default 4);
      'vanilla'         use_bottleneck=False, as this package computes it;
      'vanilla-scenic'  use_bottleneck=False with Scenic's literal schedule (only if `scenic_schedule` and the
                        encoders are separate; with share_encoder both schedules are one joint pass).
    Everything else (share_encoder, head, geometry) is `config`'s. Needs a model with two modalities.
    """
    if len(config.modality_fusion) < 2:
        raise ConfigError(f"a fusion-layer sweep needs a model with two modalities; this one has "
                          f"{list(config.modality_fusion)}")
    kinds: list[tuple[str, bool, bool]] = [("bottleneck", True, False), ("vanilla", False, False)]
    if scenic_schedule and not config.share_encoder:
        kinds.append(("vanilla-scenic", False, True))
    n_bottlenecks = config.n_bottlenecks if config.n_bottlenecks and config.n_bottlenecks >= 1 else 4
    rows = []
    for layer in range(config.num_layers + 1):
        for name, use_bottleneck, scenic in kinds:
            c = config.replace(fusion_layer=layer, use_bottleneck=use_bottleneck, n_bottlenecks=n_bottlenecks)
            rows.append({"fusion": name, "fusion_layer": layer, **count_flops(c, modalities, scenic)})
    return rows


def scenic_schedule_differs(config: MBTConfig, modalities: Sequence[str] | None = None) -> bool:
    """Whether Scenic's literal vanilla schedule costs more than ours: some block of the fusion plan (eval mode)
    attends over other modalities' tokens as context (vanilla fusion, separate weights, two modalities given)."""
    present = config.select_modalities(modalities)
    return any(run.context for step in fusion_plan(config, present, training=False) for run in step.runs)


def single_row(config: MBTConfig, modalities: Sequence[str] | None = None,
               scenic_vanilla_schedule: bool = False) -> dict[str, Any]:
    """`count_flops` as a table row, its 'fusion' named after the config (bottleneck, vanilla, late, none)."""
    if len(config.modality_fusion) == 1:
        fusion = "none"
    elif config.fusion_layer == config.num_layers:
        fusion = "late"
    elif config.use_bottleneck:
        fusion = "bottleneck"
    else:
        fusion = "vanilla-scenic" if scenic_vanilla_schedule and not config.share_encoder else "vanilla"
    return {"fusion": fusion, "fusion_layer": config.fusion_layer,
            **count_flops(config, modalities, scenic_vanilla_schedule)}


# ---------------------------------------------------------------------------------------------------- output
def format_table(rows: Iterable[dict[str, Any]]) -> str:
    """A plain-text table with the COLUMNS (fusion, fusion layer, GMACs (multiply-adds), GFLOPs (2/MAC), params)."""
    header = [h for _, h, _ in COLUMNS]
    def cell(fmt: str, value: Any) -> str:
        big, _, small = fmt.partition("|")
        return (small if small and abs(value) < 1 else big).format(value)

    body = [[cell(fmt, row[key]) for key, _, fmt in COLUMNS] for row in rows]
    widths = [max(len(c) for c in col) for col in zip(header, *body)]
    lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for cells in body:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(lines)


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write the rows as JSON (.json: a list of objects) or CSV (.csv: one line per row, `tokens` flattened)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        path.write_text(json.dumps(list(rows), indent=2) + "\n")
    elif suffix == ".csv":
        keys = ["fusion", "fusion_layer", "gmacs", "gflops", "macs", "flops", "params", "modalities"]
        keys += [f"tokens_{m}" for m in MODALITIES]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow({**{k: r.get(k) for k in keys[:7]}, "modalities": "+".join(r["modalities"]),
                            **{f"tokens_{m}": r["tokens"].get(m, "") for m in MODALITIES}})
    else:
        raise InputError(f"{path}: give a .json or .csv file for the counts")
    return path


def plot_sweep(rows: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """A PNG of GFLOPs (2/MAC) per clip against fusion layer, one line per fusion type (the paper's compute
    figure: vanilla cross-attention against bottleneck fusion; the last layer is late fusion)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    style = {"bottleneck": ("o-", "#4C72B0", "bottleneck fusion"),
             "vanilla": ("s-", "#DD8452", "vanilla cross-attention"),
             "vanilla-scenic": ("^--", "#C44E52", "vanilla, Scenic's schedule")}
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    layers: list[int] = []
    for kind in FUSION_TYPES:
        pts = sorted((r["fusion_layer"], r["gflops"]) for r in rows if r["fusion"] == kind)
        if not pts:
            continue
        marker, colour, label = style[kind]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, color=colour, label=label)
        layers = sorted(set(layers) | {p[0] for p in pts})
    if layers:
        ax.set_xticks(layers)
    ax.set_xlabel(f"fusion layer ({layers[-1] if layers else 'L'} = late fusion)")
    ax.set_ylabel("GFLOPs per clip (2 per multiply-add)")
    ax.set_title(title or "Compute against fusion layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["DEFAULT_NUM_CLASSES", "FUSION_TYPES", "load_config", "describe", "scenic_schedule_differs", "parameter_count", "count_flops",
           "flop_count", "sweep", "single_row", "format_table", "write_rows", "plot_sweep"]
