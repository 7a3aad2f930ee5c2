"""`mbt demo`: generate AV-Digits, train a small MBT and its single-modality baselines on the CPU, report.

The three models come from one run config (`avdigits_run_config`) and differ only in `modality_fusion`:
  video  the rgb stream alone, from scratch;
  audio  the spectrogram stream alone, from scratch;
  mbt    bottleneck fusion from layer L/2 (mid fusion), audio + video, in the paper's regime: each stream starts
         from the `video` and `audio` models and the whole is fine-tuned for a quarter of their epochs at a quarter
         of their learning rate, with modality dropout (a quarter of the clips without frames, a quarter without
         audio).
Each is evaluated on the test split; the fusion model also with one modality removed at test time (scored with
the stream it still has, as `mbt eval` does for files without audio) and with noise on each stream. Every test clip is decoded and loaded once:
the conditions are scored from the same batch (`mbt.engine.evaluate_conditions`). The report (report.md,
accuracy.png, missing_modality.png, results.json) goes to the output folder. The same helpers drive the study
(`mbt.avdigits.study`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..analysis.flops import flop_count, parameter_count
from ..analysis.robustness import format_table, robustness, write_robustness
from ..data.annotations import read_annotations
from ..data.config import load_pretrained
from ..data.stats import compute_stats
from ..data.datasets import VideoDataset
from ..engine.config import RunConfig, task_of
from ..progress import progress_bar
from ..engine.evaluate import evaluate_conditions, write_results
from ..engine.trainer import EVAL_DIR, train
from ..errors import AVDigitsError
from ..models.config import STREAM
from ..models.pretrained import WEIGHTS_NAME
from . import generator as avdigits

# The demo model: 4 layers of width 96, global average pooling, tubelets 2x16x16 on 8 frames of 64x64 (64 tokens), 16x16 patches on a
# 1.92 s log-mel window of 64 bins (48 tokens), 4 bottleneck tokens, fusion from layer 2 (mid fusion).
DEMO_MODEL: dict[str, Any] = dict(
    modality_fusion=["spectrogram", "rgb"], hidden_size=96, num_layers=4, num_heads=4, mlp_dim=192,
    fusion_layer=2, use_bottleneck=True, n_bottlenecks=4, classifier="gap", stochastic_droplayer_rate=0.1,
    num_frames=8, image_size=[64, 64], rgb_patch_size=[2, 16, 16], spectrogram_shape=[192, 64],
    spectrogram_patch_size=[16, 16], spectrogram_channels=1)
# (Trained from scratch: one spectrogram channel, as the demo's published figures were made; MBTConfig's default 3
# copies trains that kernel as Scenic does.)
# Small enough for a test to train it in seconds.
TINY_MODEL: dict[str, Any] = dict(DEMO_MODEL, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, fusion_layer=1)

VARIANTS: dict[str, dict[str, Any]] = {  # in training order: the fusion model starts from the other two
    "video": {"modality_fusion": ["rgb"]},
    "audio": {"modality_fusion": ["spectrogram"]},
    "mbt": {},
}
# The demo's fusion model trains for a missing stream: a quarter of the clips without their frames, a quarter without
# their audio (modality dropout, data.augment), so that it keeps working on a video without sound.
MODALITY_DROPOUT: dict[str, float] = {"rgb_drop_prob": 0.25, "spectrogram_drop_prob": 0.25}
VARIANT_AUGMENT: dict[str, dict[str, float]] = {"mbt": MODALITY_DROPOUT}
# The fusion model is fine-tuned from the single-modality models for this share of their epochs, at this peak
# learning rate (a quarter of theirs: at 2e-3 the fine-tuning undoes the streams' training, and the fusion model
# with a stream removed falls 2-4 points under the single-modality model; 5e-4 was chosen over 2e-4 on a validation
# set, see docs/results/robustness).
FINETUNE_SHARE = 0.25
FINETUNE_LR = 5e-4
# The peak learning rate of every model trained from scratch (the single-modality models).
TRAIN_LR = 2e-3
# The single-modality run of each modality; the fusion model starts from them. Named as the report's columns.
UNIMODAL_RUNS = dict(STREAM)
# The corruptions of the demo's robustness table (mbt eval --robustness has more), mild to severe.
DEMO_CORRUPTIONS = {("audio", "noise"): (20.0, 10.0, 0.0), ("video", "noise"): (0.2, 0.5, 1.0)}


def avdigits_run_config(data_dir: str | Path, output_dir: str | Path, model: dict[str, Any] | None = None,
                        epochs: float = 20, batch_size: int = 32, lr: float = TRAIN_LR, seed: int = 0,
                        spec_stats: tuple[float, float] | None = None, progress: bool = True) -> RunConfig:
    """The run config for an AV-Digits folder: the model (default DEMO_MODEL), AdamW with warm-up and cosine,
    the whole 2 s clip as the window (8 frames at 4 fps, 192 log-mel frames), no flips (digits are not symmetric),
    decoded clips cached in memory (the dataset is read for many epochs)."""
    data_dir = Path(data_dir)
    front_end: dict[str, Any] = {"mean": "auto", "std": "auto"}
    if spec_stats is not None:
        front_end = {"mean": float(spec_stats[0]), "std": float(spec_stats[1])}
    d = {
        "model": copy.deepcopy(model or DEMO_MODEL),
        "data": {"fps": 4.0, "stride": 1, "min_resize": 64, "num_test_clips": 1, "front_end": front_end,
                 "augment": {"scale_jitter": None, "flip": False, "color_augment_prob": 0.5,
                             "color_drop_prob": 0.0, "freq_mask_count": 1, "freq_mask_max_bins": 8,
                             "time_mask_count": 1, "time_mask_max_frames": 16, "mixup_alpha": 0.0}},
        "dataset": {"train": {"annotations": str(data_dir / "train.csv")},
                    "test": {"annotations": str(data_dir / "test.csv")}},
        "optim": {"name": "adamw", "lr": lr, "weight_decay": 0.3, "batch_size": batch_size, "epochs": epochs,
                  "warmup_epochs": min(1.0, epochs / 4), "max_grad_norm": 1.0, "label_smoothing": 0.1},
        "train": {"output_dir": str(output_dir), "seed": seed, "device": "cpu", "num_workers": 0,
                  "cache_decoded": True, "eval_every_epochs": 0, "checkpoint_every_steps": 10**9,
                  "keep_checkpoints": 1, "tensorboard": False, "progress": progress},
    }
    return RunConfig.from_dict(d)


def weights_kept(run_dir: Path) -> bool:
    """Whether the run in `run_dir` still has its model's weights (a later run starts from them)."""
    return (run_dir / "model" / WEIGHTS_NAME).is_file()


def headline(summary: dict[str, Any], problem_type: str) -> dict[str, float]:
    """The accuracies a report shows: top-1 (single-label), or each head's top-1 (multi-head)."""
    if problem_type == "multi_head":
        return {k[: -len("_top1")]: float(v) for k, v in summary.items() if k.endswith("_top1")
                and not k.startswith("action")}
    return {"top1": float(summary["top1"])}


def streams(modalities: tuple[str, ...] | list[str]) -> str:
    """('spectrogram', 'rgb') -> 'audio+video' (the names of the report's columns)."""
    return "+".join(STREAM[m] for m in modalities)


def train_and_evaluate(cfg: RunConfig, cache: dict | None = None, missing: bool = True,
                       progress: bool = True) -> dict[str, Any]:
    """Train `cfg` (without its test evaluation), then score each clip of dataset.test once, with every modality
    the model has and (if `missing` and it has two) with each one alone, from the same decoded clip. `cache` (a
    dict, see VideoDataset) keeps the decoded training and test clips for later runs on the same files. The
    full-modality metrics go to <output_dir>/eval as `mbt train` writes them. Returns a row: accuracies per test
    condition, time, parameters, FLOPs."""
    test = cfg.dataset.test
    train_only = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, test=None))
    t0 = time.perf_counter()
    model_dir = train(train_only, cache=cache)
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    model, data_config = load_pretrained(model_dir)
    ann = read_annotations(test.annotations, labels=list(model.config.label_names))
    full = tuple(model.config.modality_fusion)
    conditions: list[tuple[str, ...]] = [full] + ([(m,) for m in full] if missing and len(full) > 1 else [])
    scored = evaluate_conditions(model, ann, data_config, torch.device("cpu"), conditions, split="test",
                                 batch_size=64, cache=cache, progress=progress)
    write_results(Path(cfg.train.output_dir) / EVAL_DIR, *scored[full])
    results = {streams(c): headline(summary, model.config.task) for c, (summary, _) in scored.items()}
    return {"model_dir": str(model_dir), "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - t1, "params": parameter_count(model.config),
            **flop_count(model.config), "results": results, "modalities": streams(full)}


def decode_into_memory(cfg: RunConfig, cache: dict, progress: bool = True) -> float:
    """Decode every training and test clip of `cfg` into `cache` (see VideoDataset) before any model is trained,
    so that no model's training time includes the decoding the three share. Returns the seconds it took."""
    t0 = time.perf_counter()
    train_ann = cfg.dataset.train.read()
    model_config = cfg.model_config(**task_of(train_ann))
    data_config = cfg.data_config(model_config)
    for split, ann in (("train", train_ann), ("test", cfg.dataset.test.read(train_ann.label_names))):
        data = VideoDataset(ann, data_config, split=split, seed=cfg.train.seed, cache=cache, on_error="skip")
        for i in progress_bar(range(len(data)), desc=f"decoding {split} clips", unit="clip", disable=not progress):
            data[i]
    return time.perf_counter() - t0


def spectrogram_stats(data_dir: str | Path, model: dict[str, Any], max_clips: int = 500,
                      progress: bool = True) -> tuple[float, float]:
    """Mean and std of the log-mel features of the first `max_clips` training clips (once for all runs)."""
    cfg = avdigits_run_config(data_dir, "unused", model=model)
    model_config = cfg.model_config(num_classes=10)
    ann = read_annotations(cfg.dataset.train.annotations)
    stats = compute_stats(ann, cfg.data_config(model_config), max_clips=max_clips, progress=progress)
    return stats.mean, stats.std


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), " \
           f"Python {platform.python_version()}"


# ---------------------------------------------------------------------------------------------------- the demo
def run_demo(out: str | Path = "mbt-demo", train_clips: int = 3000, test_clips: int = 1000, epochs: float = 20,
             seed: int = 0, tiny: bool = False, workers: int | None = None, progress: bool = True) -> Path:
    """Generate (or reuse) AV-Digits in <out>/data, train the three models in <out>/runs, write <out>/report.md.
    Returns the report's path."""
    out = Path(out)
    t_start = time.perf_counter()
    model = TINY_MODEL if tiny else DEMO_MODEL
    say = tqdm.write
    data_cfg = avdigits.AVDigitsConfig(mode="same", train_clips=train_clips, test_clips=test_clips, seed=seed)
    say(f"[1/5] AV-Digits ({train_clips} train + {test_clips} test clips) in {out / 'data'}")
    # The demo's own data folder: a dataset made with other settings (another --train-clips) is replaced.
    avdigits.generate(data_cfg, out / "data", workers=workers, progress=progress, overwrite=True)
    say("[2/5] spectrogram statistics")
    stats = spectrogram_stats(out / "data", model, progress=progress)
    cache: dict = {}  # decoded clips, shared by the three runs and their test evaluations
    rows: dict[str, dict[str, Any]] = {}
    trained: list[str] = []
    decode_seconds = None
    for k, (name, change) in enumerate(VARIANTS.items(), start=3):
        run_dir = out / "runs" / name
        say(f"[{k}/5] training {name!r} ({'+'.join(change.get('modality_fusion', model['modality_fusion']))}) "
            f"into {run_dir}")
        fusion = len(change.get("modality_fusion", model["modality_fusion"])) > 1
        cfg = avdigits_run_config(out / "data", run_dir, model={**model, **change},
                                  epochs=epochs * FINETUNE_SHARE if fusion else epochs,
                                  **({"lr": FINETUNE_LR} if fusion else {}), seed=seed, spec_stats=stats,
                                  progress=progress)
        cfg.data["augment"].update(VARIANT_AUGMENT.get(name, {}))
        if fusion:  # each stream from its single-modality model (mbt train --init-from)
            for m, source in UNIMODAL_RUNS.items():
                setattr(cfg.init, m, str(out / "runs" / source / "model"))
                if not weights_kept(out / "runs" / source):
                    raise AVDigitsError(f"{out / 'runs' / source / 'model'}: the {source} model the fusion model "
                                        "starts from is missing; delete that run folder and run mbt demo again")
        key = json.dumps({"data": data_cfg.to_dict(), "run": cfg.to_dict()}, sort_keys=True)
        row_file = run_dir / "demo_row.json"
        if run_dir.exists():  # a finished run of the same settings is reused; anything else is redone
            # (the fusion model is redone when a model it starts from was trained again)
            if row_file.is_file() and json.loads(row_file.read_text()).get("key") == key and not (fusion and trained):
                rows[name] = json.loads(row_file.read_text())
                say(f"      reusing the finished run in {run_dir}")
                continue
            import shutil

            shutil.rmtree(run_dir)
        if decode_seconds is None:  # once, before the first model that is trained in this invocation
            say("      decoding the clips into memory (once; the three models share them)")
            both = avdigits_run_config(out / "data", run_dir, model=model, epochs=epochs, seed=seed,
                                       spec_stats=stats)  # the fusion model's inputs: frames and audio
            decode_seconds = decode_into_memory(both, cache, progress)
        rows[name] = {**train_and_evaluate(cfg, cache, progress=progress), "key": key}
        if fusion:
            say("      robustness: each stream removed, and noise on each at three strengths")
            fused, data_config = load_pretrained(rows[name]["model_dir"])
            test = read_annotations(cfg.dataset.test.annotations, labels=list(fused.config.label_names))
            rows[name]["robustness"] = robustness(fused, test, data_config, torch.device("cpu"), batch_size=64,
                                                  progress=progress, strengths=DEMO_CORRUPTIONS, cache=cache)
        trained.append(name)
        row_file.write_text(json.dumps(rows[name], indent=2) + "\n")
    seconds = time.perf_counter() - t_start
    if decode_seconds is None and (out / "results.json").is_file():  # every run reused: the earlier decoding time
        decode_seconds = json.loads((out / "results.json").read_text())["meta"].get("decode_seconds")
    report = write_report(out, rows, {"data": data_cfg.to_dict(), "epochs": epochs, "seed": seed,
                                      "model": model, "seconds": seconds, "machine": machine(),
                                      "spectrogram_stats": stats, "decode_seconds": decode_seconds,
                                      "reused": [n for n in rows if n not in trained]})
    say(f"done in {seconds / 60:.1f} min: the report is {report}")
    return report


def _times(rows: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """Where the time went: decoding (once, shared), then each model's training and evaluation, and how long this
    invocation took when it reused finished runs."""
    work = sum(r["train_seconds"] + r.get("eval_seconds", 0.0) for r in rows.values())
    text = ""
    if meta.get("decode_seconds") is not None:
        text += (f"Decoding the clips into memory took {meta['decode_seconds'] / 60:.1f} min, once, before the "
                 "models (it is in no model's training time). ")
    text += f"Training and evaluating the {len(rows)} models took {work / 60:.1f} min."
    if meta.get("reused"):
        text += (f" This invocation took {meta['seconds'] / 60:.1f} min: it reused the finished run(s) "
                 f"{', '.join(meta['reused'])}.")
    return text


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _bar_plot(path: Path, labels: list[str], values: list[float], colours: list[str], title: str,
              size: tuple[float, float], fontsize: float | None = None) -> None:
    """A labelled bar chart of accuracies (%) written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    bars = ax.bar(range(len(values)), values, color=colours)
    ax.bar_label(bars, fmt="%.1f")
    ax.set_xticks(range(len(values)), labels, fontsize=fontsize)
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, rows: dict[str, dict[str, Any]], meta: dict[str, Any]) -> Path:
    """report.md with the results table and PNG plots, and results.json with every number."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    conditions = ["audio+video", "video", "audio"]
    acc = {name: {c: r["results"].get(c, {}).get("top1") for c in conditions} for name, r in rows.items()}
    full = {name: r["results"][r["modalities"]]["top1"] for name, r in rows.items()}

    names = [n for n in ("mbt", "video", "audio") if n in rows] + [n for n in rows if n not in ("mbt", "video", "audio")]
    palette = {"mbt": "#4C72B0", "video": "#55A868", "audio": "#C44E52"}
    _bar_plot(out / "accuracy.png", names, [100 * full[n] for n in names],
              [palette.get(n, "grey") for n in names], "AV-Digits (same): accuracy per model", (5, 3.2))
    labels, values, colours = [], [], []
    for name, colour in (("mbt", "#4C72B0"), ("video", "#55A868"), ("audio", "#C44E52")):
        for c in conditions:
            if name in acc and acc[name][c] is not None:
                labels.append(f"{name}\n{c}")
                values.append(100 * acc[name][c])
                colours.append(colour)
    _bar_plot(out / "missing_modality.png", labels, values, colours, "Streams given at test time", (6, 3.2),
              fontsize=8)

    d = meta["data"]
    m = meta["model"]
    best_single = max((full[n] for n in ("video", "audio") if n in full), default=None)
    lines = [
        "# mbt demo: AV-Digits",
        "",
        f"Made by `mbt demo` on {meta['machine']}. " + _times(rows, meta),
        "",
        f"Data: AV-Digits `same` mode, {d['train_clips']} training and {d['test_clips']} test clips (seed "
        f"{d['seed']}): a handwritten MNIST digit moving over a background (degradations at most: "
        + ", ".join(f"{k} {d[k]:g}" for k in ("texture", "distractors", "occluder", "blur", "noise"))
        + f"), and the same digit spoken by eSpeak NG in noise and babble at {d['snr_db'][0]:g} to "
        f"{d['snr_db'][1]:g} dB SNR. Test clips use digit images and voices never seen in training.",
        "",
        f"Models: MBT with {m['num_layers']} layers of width {m['hidden_size']}, the same recipe for all. `video` "
        f"and `audio` are single-modality models trained from scratch for {meta['epochs']:g} epochs. `mbt` fuses "
        f"audio and video through {m['n_bottlenecks']} bottleneck tokens from layer {m['fusion_layer']}; as in the "
        "paper, each stream starts from a pretrained encoder (here the `video` and `audio` models, `mbt train "
        f"--init-from`), and it is fine-tuned for {meta['epochs'] * FINETUNE_SHARE:g} epochs at a peak learning rate "
        f"of {FINETUNE_LR:g} (theirs: {TRAIN_LR:g}) with modality dropout (a quarter of the clips without frames, a quarter "
        "without audio).",
        "",
        "## Test accuracy (top-1, %)",
        "",
        "| model | streams | audio+video | video only | audio only | GFLOPs | params | train time |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        r = rows[name]
        lines.append(f"| {name} | {r['modalities']} | {_pct(acc[name]['audio+video'])} | {_pct(acc[name]['video'])} "
                     f"| {_pct(acc[name]['audio'])} | {r['gflops']:.3f} | {r['params'] / 1e6:.2f} M "
                     f"| {r['train_seconds'] / 60:.1f} min |")
    lines += ["", "GFLOPs: one clip's forward pass, 2 FLOPs per multiply-add (torch.utils.flop_counter).", ""]
    if best_single is not None and "mbt" in full:
        gain = 100 * (full["mbt"] - best_single)
        lines += [f"Fusion gain: MBT {_pct(full['mbt'])}% against the best single stream {_pct(best_single)}% "
                  f"({gain:+.1f} points).", ""]
    lines += ["![accuracy per model](accuracy.png)", "", "![accuracy with a stream missing](missing_modality.png)",
              ""]
    robust = rows.get("mbt", {}).get("robustness")
    if robust:
        write_robustness(robust, out, title="mbt (AV-Digits): streams removed and corrupted")
        lines += ["## Robustness of the fusion model", "",
                  "`mbt` was fine-tuned with modality dropout (a quarter of the clips without their frames, a quarter "
                  "without their audio), so that a clip with a missing stream is not new to it. Test top-1 with each "
                  "stream removed, and with noise on one stream (audio: white noise at an SNR; video: Gaussian noise "
                  "on the frames in [-1, 1]):", "", format_table(robust), "",
                  "![robustness](robustness.png)", "",
                  "`mbt eval MODEL test.csv --robustness` draws the same for any model (with blur and occlusion "
                  "too).", ""]
    lines += ["Every number is in results.json; each model directory (runs/<name>/model) works with `mbt eval`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
