"""The `mbt` command line. Each sub-command is a thin wrapper over a library function; the library is imported
inside each command, so `mbt --help` is quick. Every error mbt raises on purpose is an `mbt.errors.MBTError`:
`main` catches it (and the operating system's OSError) once and prints it as one line."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .errors import ConfigError, InputError, MBTError, MissingFileError


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and examples; defaults are written into each option's help."""


def _positive_pair(text: str) -> tuple[int, int]:
    parts = text.replace("x", " ").replace(",", " ").split()
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected two positive integers like '224 224' or '224x224', got {text!r}")
    return int(parts[0]), int(parts[1])


def _comma_list(text: str) -> list[str]:
    """'spectrogram, rgb' -> ['spectrogram', 'rgb'] (the one parser of comma-separated options)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list such as 'spectrogram,rgb', got {text!r}")
    return items


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", formatter_class=_Formatter,
        help="convert a Scenic (Flax) MBT checkpoint into a model directory",
        description=(
            "Convert a Scenic MBT checkpoint (a Flax msgpack file: the current train-state layout with 'params', "
            "or the MBT-trainer / model-zoo layout with 'optimizer/target') into a model directory holding "
            "config.json and model.safetensors, which mbt.MBT.from_pretrained reads. No jax or flax is needed.\n\n"
            "The parameter tree gives the width, depth, heads, modalities, classifier, bottleneck count, patch "
            "sizes and representation size. What it cannot give comes from the options below; their defaults are "
            "those of the released MBT-B/16x2 AudioSet models (fusion at layer 8, 32 frames of 224x224, an 800x128 "
            "spectrogram)."),
        epilog=(
            "examples:\n"
            "  mbt convert mbtb32_as-500k_rgb-spec mbt-b16x2-as500k-rgb-spec\n"
            "  mbt convert checkpoint_1 out/ --fusion-layer 2 --num-frames 8 --image-size 32x32 "
            "--spectrogram-shape 100x32\n"))
    p.add_argument("checkpoint", help="Flax msgpack checkpoint file (or a folder: its newest checkpoint_<step>)")
    p.add_argument("out_dir", help="model directory to write (config.json + model.safetensors)")
    p.add_argument("--fusion-layer", type=int, default=None,
                   help="first layer with cross-modal exchange; it is not stored in the checkpoint (default: 8, "
                        "as in the released models, or 0 for a single-modality model, where it has no effect)")
    p.add_argument("--no-test-with-bottlenecks", dest="test_with_bottlenecks", action="store_false",
                   help="evaluate a bottleneck model without any cross-modal exchange (Scenic's "
                        "test_with_bottlenecks=False)")
    p.add_argument("--modality-fusion", type=_comma_list, default=None,
                   help="modality order, comma-separated (default: spectrogram,rgb, as in the released config; "
                        "only the order of the output tokens depends on it)")
    p.add_argument("--classifier", choices=("token", "gap", "gmp", "gsp"), default=None,
                   help="head type; inferred as 'token' when the checkpoint has CLS tokens, else 'gap' "
                        "(gap, gmp and gsp have the same parameters: say which)")
    p.add_argument("--num-frames", type=int, default=32, help="rgb frames per clip (default: 32)")
    p.add_argument("--image-size", type=_positive_pair, default=(224, 224), metavar="HxW",
                   help="rgb frame height and width (default: 224x224)")
    p.add_argument("--spectrogram-shape", type=_positive_pair, default=(800, 128), metavar="TIMExMEL",
                   help="spectrogram time frames and mel bins (default: 800x128)")
    p.add_argument("--n-sampled-frames", type=int, default=None,
                   help="frames kept by a 'temporal_sampling' rgb embedding (2-D embedding kernel)")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from .weights.scenic import convert_checkpoint

    config = convert_checkpoint(
        args.checkpoint, args.out_dir, fusion_layer=args.fusion_layer,
        test_with_bottlenecks=args.test_with_bottlenecks, modality_fusion=args.modality_fusion,
        classifier=args.classifier, num_frames=args.num_frames, image_size=args.image_size,
        spectrogram_shape=args.spectrogram_shape, n_sampled_frames=args.n_sampled_frames)
    print(f"wrote {args.out_dir} (config.json, model.safetensors, preprocessor_config.json): "
          f"{'+'.join(config.modality_fusion)}, {config.num_layers} layers x {config.hidden_size} wide, "
          f"{config.num_heads} heads, {config.describe_fusion()}, {config.classifier} head, "
          f"{config.num_classes} classes")
    print("preprocessor_config.json: the official AudioSet sampling and spectrogram statistics (mean 1.102, std "
          "2.762) with mbt's log-mel front end; Google's exact extractor is unknown, so features differ slightly "
          "(see README, 'Convert a Scenic checkpoint')", file=sys.stderr)
    return 0


def _add_stats(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stats", formatter_class=_Formatter,
        help="mean and std of the spectrogram features over a dataset (for normalisation)",
        description=(
            "Compute the mean and standard deviation of the audio front end's features over the clips of an "
            "annotation file (the middle window of each clip, every frame and mel bin, before normalisation). "
            "Use them as front_end.mean / front_end.std of the data config; --write-config writes such a config."),
        epilog=(
            "examples:\n"
            "  mbt stats train.csv\n"
            "  mbt stats balanced_train_segments.csv --video-dir audioset/ --labels class_labels_indices.csv "
            "--write-config preprocessor_config.json\n"))
    _add_data_args(p)
    p.add_argument("--front-end", choices=("logmel", "kaldi_fbank"), default="logmel",
                   help="audio front end (default: logmel, 16 kHz, 25 ms Hamming, 10 ms hop, 128 mel bins)")
    p.add_argument("--num-mel-bins", type=int, default=128, help="mel bins (default: 128)")
    p.add_argument("--spec-frames", type=int, default=800, help="frames per window (default: 800 = 8 s)")
    p.add_argument("--max-clips", type=int, default=None, help="use only the first N clips")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    p.add_argument("--write-config", default=None, metavar="FILE",
                   help="write a data config (JSON, as preprocessor_config.json) with these statistics")
    p.set_defaults(func=_run_stats)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("annotations", help="annotation file: AudioSet segments CSV, vggsound.csv, EPIC-KITCHENS-100 CSV, "
                                       "Kinetics CSV, or a plain CSV path,label[,start,end]")
    p.add_argument("--format", default="auto", choices=("auto", "audioset", "vggsound", "epic", "kinetics", "csv"),
                   help="annotation format (default: detected from the file)")
    p.add_argument("--video-dir", default=None,
                   help="folder with the media files (searched recursively; for a plain CSV, the base of relative "
                        "paths, default: the CSV's folder)")
    p.add_argument("--labels", default=None,
                   help="AudioSet: class_labels_indices.csv (default: beside the CSV); EPIC: the folder with the "
                        "class CSVs; others: a file with one label name per line")
    p.add_argument("--split", default=None, help="VGGSound: use only rows of this split (train or test)")


def _run_stats(args: argparse.Namespace) -> int:
    from .data.annotations import read_annotations
    from .data.audio import FrontEndConfig
    from .data.config import DataConfig
    from .data.stats import compute_stats

    annotations = read_annotations(args.annotations, format=args.format, video_dir=args.video_dir,
                                   labels=args.labels, split=args.split)
    print(annotations.summary(), file=sys.stderr)
    front_end = FrontEndConfig.preset(args.front_end, num_mel_bins=args.num_mel_bins)
    config = DataConfig(front_end=front_end, spec_frames=args.spec_frames)
    stats = compute_stats(annotations, config, max_clips=args.max_clips, num_workers=args.workers)
    print(stats.skipped, file=sys.stderr)
    print(f"mean {stats.mean:.6f}  std {stats.std:.6f}  ({stats.num_clips} clips, {stats.num_values} values, "
          f"front end {args.front_end})")
    if args.write_config:
        if not (math.isfinite(stats.mean) and math.isfinite(stats.std) and stats.std > 0):
            raise InputError(f"the statistics are not usable (mean {stats.mean}, std {stats.std}); nothing was "
                             f"written to {args.write_config}")
        config = dataclasses.replace(config, front_end=dataclasses.replace(front_end, mean=stats.mean,
                                                                           std=stats.std))
        config.save_file(args.write_config)
        print(f"wrote {args.write_config}", file=sys.stderr)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", formatter_class=_Formatter,
        help="train (and evaluate) a model from a YAML run config",
        description=(
            "Train MBT as a YAML run config says (sections model, data, dataset, init, optim, train; see configs/), "
            "with any field overridden on the command line as --section.key value. Writes to train.output_dir: the "
            "resolved config.yaml, resumable checkpoints, CSV and TensorBoard logs, the final model directory "
            "(model/) and, with dataset.test, the multi-clip test metrics (eval/).\n\n"
            "Many GPUs (or CPU processes): start it with torchrun; optim.batch_size stays the global batch."),
        epilog=(
            "examples:\n"
            "  mbt train configs/audioset_mini.yaml --dataset.train.video_dir data/audioset --train.output_dir runs/as\n"
            "  mbt train configs/vggsound.yaml --optim.lr 0.1 --optim.batch_size=32 --train.num_workers 8\n"
            "  mbt train runs/as/config.yaml --resume\n"
            "  mbt train runs/as/config.yaml --resume-from runs/as/checkpoints/step-00001000.pt\n"
            "  mbt train mbt-demo/runs/mbt/config.yaml --init-from mbt-demo/runs/video/model mbt-demo/runs/audio/model "
            "--train.output_dir runs/mbt-from-unimodal\n"
            "  mbt train configs/audioset_mini.yaml --init-from rgb=weights/ViT-B_16.npz "
            "spectrogram=weights/audioset_10_10_0.4593.pth\n"
            "  torchrun --nproc-per-node 8 -m mbt train configs/kinetics400.yaml\n"))
    p.add_argument("config", help="YAML run config")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in train.output_dir from its newest checkpoint")
    p.add_argument("--resume-from", default=None, metavar="CHECKPOINT",
                   help="continue from this checkpoint of the run (e.g. an older one when the newest is damaged); "
                        "newer checkpoints are kept as *.pt.superseded")
    p.add_argument("--init-from", nargs="+", default=None, metavar="[MODALITY=]PATH",
                   help="start each stream from its own pretrained encoder: an mbt model directory with one modality "
                        "(its stream is taken), or MODALITY=PATH for a ViT file, an AST checkpoint (spectrogram) or "
                        "one stream of a multimodal model directory; the same as --init.rgb PATH "
                        "--init.spectrogram PATH")
    p.set_defaults(func=_run_train, takes_overrides=True)


def _init_from_overrides(paths: Sequence[str]) -> list[str]:
    """--init-from items -> ['--init.rgb=PATH', ...]: 'MODALITY=PATH', or a model directory with one modality."""
    from .models.config import MODALITIES, MBTConfig
    from .models.pretrained import CONFIG_NAME

    out: dict[str, str] = {}
    for item in paths:
        modality, _, path = item.partition("=") if item.split("=", 1)[0] in MODALITIES else ("", "", item)
        if not modality:
            config = Path(path) / CONFIG_NAME
            if not config.is_file():
                raise ConfigError(f"--init-from {path}: not an mbt model directory (no {CONFIG_NAME}); for a ViT or "
                                  "AST file name the stream: rgb=PATH or spectrogram=PATH")
            modalities = MBTConfig.from_json_file(config).modality_fusion
            if len(modalities) != 1:
                raise ConfigError(f"--init-from {path}: the model has {list(modalities)}; name the stream to take "
                                  "from it: rgb=PATH or spectrogram=PATH")
            modality = modalities[0]
        if modality in out:
            raise ConfigError(f"--init-from: two sources for the {modality} stream ({out[modality]}, {path})")
        out[modality] = path
    return [f"--init.{m}={p}" for m, p in out.items()]


def _run_train(args: argparse.Namespace) -> int:
    from .engine.config import RunConfig
    from .engine.distributed import is_main_process
    from .engine.trainer import train

    if not Path(args.config).is_file() and args.overrides:
        raise ConfigError(f"{args.config}: no such config file; give the config file first, then the overrides: "
                          "mbt train CONFIG.yaml --section.key value ...")
    overrides = list(args.overrides) + (_init_from_overrides(args.init_from) if args.init_from else [])
    cfg = RunConfig.from_yaml(args.config, overrides)
    model_dir = train(cfg, resume=args.resume, resume_from=args.resume_from)
    if is_main_process():
        print(f"model: {model_dir}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", formatter_class=_Formatter,
        help="evaluate a model directory on annotated videos (multi-clip), writing metrics",
        description=(
            "Score every video of an annotation file with a model directory (written by `mbt train` or `mbt "
            "convert` plus a preprocessor_config.json), averaging the raw logits of --num-test-clips clips per "
            "video, and write metrics.json and per_class.csv. Multi-label tasks: mAP (mean over the classes that "
            "have positives; the number scored is reported), mAUC, d-prime, prec@1. Single-label: top-1, top-5, "
            "mAP. EPIC-KITCHENS: verb, noun and action top-1/top-5. Runs under torchrun as well."),
        epilog=(
            "examples:\n"
            "  mbt eval runs/as/model eval_segments.csv --video-dir audioset/eval\n"
            "  mbt eval runs/vgg/model vggsound.csv --split test --video-dir vggsound/ --num-test-clips 4\n"
            "  mbt eval runs/mbt/model test.csv --drop audio              # the model without its audio stream\n"
            "  mbt eval runs/mbt/model test.csv --corrupt audio:noise:0   # white noise at 0 dB SNR\n"
            "  mbt eval runs/mbt/model test.csv --robustness              # robustness.json and robustness.png\n"))
    p.add_argument("model_dir", help="model directory (config.json, model.safetensors, preprocessor_config.json)")
    _add_data_args(p)
    p.add_argument("--output", default=None,
                   help="folder for metrics.json and per_class.csv (default: MODEL_DIR/eval-<annotation file name>)")
    p.add_argument("--num-test-clips", type=_positive_int, default=None,
                   help="clips per video, logits averaged (default: the model's preprocessor config, 4 for AudioSet)")
    p.add_argument("--batch-size", type=_positive_int, default=4, help="videos per batch (default: 4)")
    p.add_argument("--clips-per-forward", type=_positive_int, default=8, help="clips per model call (default: 8)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    p.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--max-clips", type=_positive_int, default=None, help="evaluate only the first N videos")
    p.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                   help="an unreadable video: skip it (counted in metrics.json) or stop (default: skip)")
    p.add_argument("--drop", default=None, metavar="STREAM",
                   help="evaluate without this stream (rgb or video, spectrogram or audio), as if the files lacked it")
    p.add_argument("--corrupt", default=None, metavar="STREAM:KIND:STRENGTH",
                   help="corrupt one stream in every clip: audio:noise:SNR_DB, video:noise:STD (frames in [-1, 1]), "
                        "video:blur:SIGMA_PX, video:occlusion:AREA_SHARE")
    p.add_argument("--robustness", action="store_true",
                   help="evaluate every condition (all streams, each removed, each corruption at three strengths) "
                        "and write robustness.json and robustness.png (needs matplotlib) to the output folder")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_run_eval)


def _stream_modality(name: str, modalities: Sequence[str]) -> str:
    """'audio' / 'spectrogram' / 'video' / 'rgb' -> the model's modality name; an error names the choices."""
    from .models.config import STREAM

    by_name = {**{m: m for m in STREAM}, **{v: m for m, v in STREAM.items()}}
    m = by_name.get(name)
    if m is None or m not in modalities:
        raise ConfigError(f"--drop {name!r}: the model's streams are "
                          f"{', '.join(f'{x} ({STREAM[x]})' for x in modalities)}")
    if len(modalities) == 1:
        raise ConfigError(f"--drop {name}: the model has only that stream; nothing would be left to score")
    return m


def _run_eval(args: argparse.Namespace) -> int:
    import json

    from .data.config import load_pretrained
    from .engine import distributed
    from .engine.config import SplitConfig
    from .data.corrupt import Corruption
    from .engine.evaluate import evaluate_conditions, json_ready, write_results

    info = distributed.setup(args.device, field="--device")
    try:
        model, data_config = load_pretrained(args.model_dir, map_location=info.device)
        if args.num_test_clips is not None:
            data_config = dataclasses.replace(data_config, num_test_clips=args.num_test_clips)
        condition = None  # the streams given to the model (None: all)
        if args.drop:
            dropped = _stream_modality(args.drop, model.config.modality_fusion)
            condition = tuple(m for m in model.config.modality_fusion if m != dropped)
        corruption = Corruption.parse(args.corrupt) if args.corrupt else None
        split = SplitConfig(annotations=args.annotations, format=args.format, video_dir=args.video_dir,
                            labels=args.labels, split=args.split, max_clips=args.max_clips)
        ann = split.read(model.config.label_names)
        if info.is_main:
            print(ann.summary(), file=sys.stderr)
        out = Path(args.output) if args.output else Path(args.model_dir) / f"eval-{Path(args.annotations).stem}"
        if args.robustness:
            if args.drop or args.corrupt:
                raise ConfigError("--robustness evaluates every condition itself; leave out --drop and --corrupt")
            from .analysis.robustness import format_table, robustness, write_robustness

            rows = robustness(model, ann, data_config, info.device, batch_size=args.batch_size,
                              num_workers=args.workers, clips_per_forward=args.clips_per_forward, info=info,
                              progress=args.progress)
            if info.is_main:
                print(format_table(rows))
                title = f"{Path(args.model_dir).name} on {Path(args.annotations).name}"
                paths = write_robustness(rows, out, title=title)
                print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)
            return 0
        summary, rows = evaluate_conditions(model, ann, data_config, info.device, [condition], split="test",
                                            batch_size=args.batch_size, num_workers=args.workers,
                                            clips_per_forward=args.clips_per_forward, on_error=args.on_error,
                                            info=info, progress=args.progress, corruption=corruption)[condition]
        if info.is_main:
            summary = {"model_dir": str(args.model_dir), "annotations": str(args.annotations),
                       **({"modalities": list(condition)} if condition else {}),
                       **({"corruption": corruption.name} if corruption else {}), **summary}
            metrics_path, per_class = write_results(out, summary, rows)
            print(json.dumps(json_ready({k: v for k, v in summary.items() if not isinstance(v, (list, dict))}),
                             indent=2))
            print(f"wrote {metrics_path} and {per_class}", file=sys.stderr)
    finally:
        distributed.cleanup()
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    from .avdigits.generator import AVDigitsConfig

    d = AVDigitsConfig()
    p = sub.add_parser(
        "data", formatter_class=_Formatter, help="generate a dataset (avdigits: the built-in audio-visual benchmark)",
        description="Generate a dataset on this machine (nothing is downloaded).")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    a = kinds.add_parser(
        "avdigits", formatter_class=_Formatter, help="AV-Digits: handwritten digits shown, digits spoken",
        description=(
            "AV-Digits: 2 s mp4 clips (H.264 + AAC) of a handwritten MNIST digit moving over a textured background "
            "and a digit spoken by eSpeak NG in noise and babble, with train.csv and test.csv (plain CSV format), "
            "per-clip ground truth in metadata/*.jsonl and a manifest avdigits.json. Train and test share no digit "
            "images and no voices. The seed fixes every file byte for byte.\n\n"
            "Modes: 'same' (the spoken digit is the shown one; 10 classes) and 'pair' (the two may differ; heads "
            "shown, spoken and match, with a match in --match-rate of the clips).\n\n"
            "Each difficulty knob is the maximum strength of one degradation; every clip draws its own strength "
            "between 0 and the knob. Needs the demo extra: pip install -e \".[demo]\" in a clone."),
        epilog=("examples:\n"
                "  mbt data avdigits avdigits/\n"
                "  mbt data avdigits avdigits-pair/ --mode pair --train-clips 4000\n"
                "  mbt data avdigits clean/ --texture 0 --distractors 0 --occluder 0 --blur 0 --noise 0 "
                "--no-audio-background\n"))
    a.add_argument("out_dir", help="output folder (created; must be empty or hold an AV-Digits dataset)")
    a.add_argument("--mode", choices=("same", "pair"), default=d.mode, help=f"default: {d.mode}")
    a.add_argument("--train-clips", type=int, default=d.train_clips, help=f"default: {d.train_clips}")
    a.add_argument("--test-clips", type=int, default=d.test_clips, help=f"default: {d.test_clips}")
    a.add_argument("--seed", type=int, default=d.seed, help=f"default: {d.seed}")
    a.add_argument("--workers", type=int, default=None, help="processes (default: all cores); files do not depend "
                                                               "on it")
    g = a.add_argument_group("video difficulty (0 turns a degradation off)")
    g.add_argument("--texture", type=float, default=d.texture, help=f"background contrast (default: {d.texture})")
    g.add_argument("--distractors", type=int, default=d.distractors,
                   help=f"moving fragments of other digits (default: {d.distractors})")
    g.add_argument("--occluder", type=float, default=d.occluder,
                   help=f"side of a moving occluding square, fraction of the frame (default: {d.occluder})")
    g.add_argument("--blur", type=float, default=d.blur, help=f"Gaussian blur sigma, pixels (default: {d.blur})")
    g.add_argument("--noise", type=float, default=d.noise, help=f"pixel noise std, 0-1 (default: {d.noise})")
    g = a.add_argument_group("audio difficulty")
    g.add_argument("--snr-db", type=float, nargs=2, default=list(d.snr_db), metavar=("LO", "HI"),
                   help=f"speech-to-background ratio range, dB (default: {d.snr_db[0]:g} {d.snr_db[1]:g})")
    g.add_argument("--babble", type=int, default=d.babble,
                   help=f"other spoken digits in the background (default: {d.babble})")
    g.add_argument("--no-audio-background", dest="audio_background", action="store_false",
                   help="no noise and no babble: the word alone in silence")
    a.add_argument("--match-rate", type=float, default=d.match_rate,
                   help=f"pair mode: share of clips whose spoken digit is the shown one (default: {d.match_rate})")
    a.add_argument("--overwrite", action="store_true", help="replace a dataset made with other settings")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=_run_data_avdigits)


def _run_data_avdigits(args: argparse.Namespace) -> int:
    from .avdigits.generator import AVDigitsConfig, generate

    # Every option of the command is the config field of the same name.
    cfg = AVDigitsConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AVDigitsConfig)
                            if hasattr(args, f.name)})
    manifest = generate(cfg, args.out_dir, workers=args.workers, progress=not args.quiet, overwrite=args.overwrite)
    c = manifest["counts"]
    print(f"AV-Digits ({cfg.mode}) in {args.out_dir}: {c['train']} train clips (train.csv), {c['test']} test clips "
          f"(test.csv); {manifest['voices']['train']} train / {manifest['voices']['test']} test voices; "
          f"checksum {manifest['checksum'][:16]}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", formatter_class=_Formatter, help="see MBT work in minutes on a CPU: AV-Digits, 3 models, a report",
        description=(
            "Generate AV-Digits (if not there yet), train on the CPU a video-only and an audio-only model, then a "
            "small MBT with bottleneck mid fusion whose streams start from them (fine-tuned with modality "
            "dropout), evaluate them (the fusion model also with a stream removed or corrupted) and write "
            "report.md with a results table and plots. About 10 to 15 minutes on 2 cores; run again to reuse "
            "finished parts."),
        epilog="examples:\n  mbt demo\n  mbt demo --out my-demo --epochs 30\n")
    p.add_argument("--out", default="mbt-demo", help="output folder (default: mbt-demo)")
    p.add_argument("--train-clips", type=int, default=3000, help="default: 3000")
    p.add_argument("--test-clips", type=int, default=1000, help="default: 1000")
    p.add_argument("--epochs", type=float, default=20, help="default: 20")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default: 0)")
    p.add_argument("--workers", type=int, default=None, help="processes that generate the clips (default: all cores)")
    p.add_argument("--tiny", action="store_true", help="a 2-layer width-32 model (a smoke test, not a result)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .avdigits.demo import run_demo

    run_demo(args.out, train_clips=args.train_clips, test_clips=args.test_clips, epochs=args.epochs,
             seed=args.seed, tiny=args.tiny, workers=args.workers, progress=not args.quiet)
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", formatter_class=_Formatter, help="top-k labels for your own video files or folders",
        description=(
            "Predict the top-k labels of each video with a model directory (config.json, model.safetensors, "
            "preprocessor_config.json). Folders are searched recursively for video files. The raw logits of "
            "--clips clips spread over each video are averaged; scores are softmax (single-label), sigmoid "
            "(multi-label) or a softmax per head (EPIC verb/noun). A video without an audio track is predicted "
            "from its frames (the table says so); a file that cannot be read is reported and skipped."),
        epilog=("examples:\n"
                "  mbt predict mbt-demo/runs/mbt/model mbt-demo/data/test/test_00000.mp4\n"
                "  mbt predict runs/as/model my_videos/ --clips 4 --top-k 3 --output predictions.json\n"))
    p.add_argument("model_dir", help="model directory")
    p.add_argument("videos", nargs="+", help="video files or folders")
    p.add_argument("--top-k", type=_positive_int, default=5, help="labels per video (per head) (default: 5)")
    p.add_argument("--clips", type=_positive_int, default=1, help="clips per video, logits averaged (default: 1)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="videos per batch (default: 8)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--output", default=None, help="also write the predictions to a .json or .csv file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from .analysis.predict import find_media, format_table, predict_files, write_predictions
    from .data.config import load_pretrained

    if args.output and Path(args.output).suffix.lower() not in (".json", ".csv"):
        raise ConfigError(f"--output {args.output}: use a .json or .csv file name")
    model, data_config = load_pretrained(args.model_dir, map_location=args.device)
    files, problems = find_media(args.videos)
    for problem in problems:  # reported, and the other paths are still predicted
        print(f"mbt predict: {problem}", file=sys.stderr)
    preds, report = predict_files(model, args.videos, data_config, clips=args.clips, k=args.top_k,
                                  batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                                  progress=not args.quiet, files=files)
    for s in report.skipped:
        print(f"mbt predict: skipped {s.path}: {s.reason}", file=sys.stderr)
    if preds:
        print(format_table(preds, model.config.modality_fusion))
    if args.output:
        print(f"wrote {write_predictions(preds, args.output)}", file=sys.stderr)
    # Exit 1 when a path given holds no media (or nothing could be predicted); unreadable files are reported above.
    return 0 if preds and not problems else 1


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain", formatter_class=_Formatter, help="attention-rollout heat maps of one video",
        description=(
            "Where the model looks: attention rollout (Abnar and Zuidema, 2020; head-averaged attention plus "
            "identity, renormalised, multiplied through the layers, through the bottleneck tokens in fusion "
            "layers) from the classification output to the input patches of the video's middle window. Writes "
            "frame.png (the middle frame with its tubelet's heat map and the top labels), tubelets.png (every "
            "tubelet), spectrogram.png (the log-mel input with its heat map) and explain.json (labels, the "
            "share of relevance of each stream and of the bottleneck tokens, the maps)."),
        epilog=("examples:\n"
                "  mbt explain mbt-demo/runs/mbt/model mbt-demo/data/test/test_00000.mp4 --out explain/\n"))
    p.add_argument("model_dir", help="model directory")
    p.add_argument("video", help="a video file")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--top-k", type=_positive_int, default=3, help="labels written on the frame (default: 3)")
    p.set_defaults(func=_run_explain)


def _run_explain(args: argparse.Namespace) -> int:
    from .analysis.explain import explain_video
    from .data.config import load_pretrained

    if not Path(args.video).is_file():
        raise MissingFileError(f"{args.video}: no such file")
    model, data_config = load_pretrained(args.model_dir)
    summary = explain_video(model, args.video, data_config, args.out, k=args.top_k)
    top = ", ".join(f"{t['label']} {t['score']:.3f}" for t in summary["top"])
    share = ", ".join(f"{k} {v:.2f}" for k, v in summary["relevance"].items())
    print(f"{args.video}: {top}\nrelevance: {share}\nwrote {', '.join(summary['files'])} and explain.json "
          f"to {args.out}")
    return 0


def _add_flops(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flops", formatter_class=_Formatter,
        help="multiply-adds, FLOPs and parameters of one clip, and their sweep over fusion layers",
        description=(
            "Count the compute of one clip's forward pass (eval mode, batch 1) of the model a model directory, a "
            "run config (.yaml) or a preset describes, without data or weights (torch.utils.flop_counter on the "
            "meta device). Only matrix multiplies are counted: embeddings, attention projections, QK^T and AV, "
            "MLP, classifier; norms, softmax, GELU and biases are not.\n\n"
            "Columns: 'GMACs (multiply-adds)' is billions of multiply-adds, which is what Scenic logs as "
            "'gflops' (it halves XLA's count); 'GFLOPs (2/MAC)' counts 2 FLOPs per multiply-add, as XLA's cost "
            "analysis does. For MBT-B/16x2 (gap head) XLA gives 985.1 GFLOPs at bottleneck layer 8 and 984.3 late, "
            "element-wise ops included; this count is 0.8% lower.\n\n"
            "A vanilla-fusion model is shown twice: 'vanilla' as this package runs it (queries only for each "
            "modality's own tokens) and 'vanilla-scenic', Scenic's literal schedule (same result, more work).\n\n"
            "--sweep counts every fusion layer 0..L (L = late fusion) for bottleneck and vanilla fusion, like the "
            "paper's compute figure; --plot draws it."),
        epilog=(
            "examples:\n"
            "  mbt flops mbt-b16x2\n"
            "  mbt flops runs/as/model --modalities rgb\n"
            "  mbt flops configs/audioset_mini.yaml --num-classes 527 --sweep --plot flops.png --output flops.csv\n"))
    p.add_argument("source", metavar="CONFIG_OR_MODEL_DIR",
                   help="model directory (its config.json), a config.json, a run config (.yaml) or a preset name")
    p.add_argument("--sweep", action="store_true",
                   help="count every fusion layer 0..num_layers for bottleneck and vanilla fusion")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="write a PNG of GFLOPs against fusion layer (implies --sweep)")
    p.add_argument("--output", default=None, metavar="FILE", help="also write the rows as .json or .csv")
    p.add_argument("--modalities", type=_comma_list, default=None, metavar="M[,M]",
                   help="modalities given at inference, comma-separated (default: all of the model's)")
    p.add_argument("--num-classes", type=_positive_int, default=None,
                   help="classes of the head (default: the config's; 527 when a run config leaves it to the "
                        "training annotations)")
    p.set_defaults(func=_run_flops)


def _run_flops(args: argparse.Namespace) -> int:
    from .analysis.flops import (describe, format_table, load_config, plot_sweep, scenic_schedule_differs, single_row,
                                 sweep, write_rows)

    modalities = args.modalities
    config, notes = load_config(args.source, num_classes=args.num_classes)
    for note in notes:
        print(f"source: {note}")
    print(f"model: {describe(config)}")
    if modalities is not None:
        print(f"modalities given: {'+'.join(modalities)}")
    if args.sweep or args.plot:
        rows = sweep(config, modalities)
    else:
        rows = [single_row(config, modalities)]
        if scenic_schedule_differs(config, modalities):
            rows.append(single_row(config, modalities, scenic_vanilla_schedule=True))
    print()
    print(format_table(rows))
    print()
    print("one clip, eval mode; matmuls only (2 FLOPs per multiply-add); Scenic logs GMACs as 'gflops'")
    if args.output:
        print(f"wrote {write_rows(rows, args.output)}")
    if args.plot:
        print(f"wrote {plot_sweep(rows, args.plot, title=f'{config.num_layers}-layer MBT, width {config.hidden_size}')}")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", formatter_class=_Formatter,
        help="export a model directory to ONNX for inference (fixed modalities and shapes)",
        description=(
            "Export a model directory to an ONNX file: the model in eval mode for the chosen modalities and batch "
            "size, every shape fixed. Graph inputs 'rgb' (B, 3, T, H, W), frames in [-1, 1], channels first, and/or "
            "'spectrogram' (B, 1, time, mel), a standardised log-mel spectrogram (the model's "
            "preprocessor_config.json front end); output 'logits' (B, num_classes), raw scores. The command prints "
            "the exact shapes and preprocessing.\n\n"
            "Needs the export extra: pip install -e \".[export]\" in a clone (onnx, onnxscript); --check also needs "
            "onnxruntime."),
        epilog=(
            "examples:\n"
            "  mbt export runs/as/model --onnx mbt.onnx\n"
            "  mbt export runs/as/model --onnx mbt-audio.onnx --modalities spectrogram --batch-size 4 --check\n"))
    p.add_argument("model_dir", help="model directory (config.json, model.safetensors)")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--modalities", type=_comma_list, default=None, metavar="M[,M]",
                   help="graph inputs, comma-separated (default: all of the model's modalities)")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="fixed batch size (default: 1)")
    p.add_argument("--opset", type=_positive_int, default=18, help="ONNX opset (default: 18)")
    p.add_argument("--check", action="store_true",
                   help="run the file with onnxruntime on random inputs and compare with PyTorch")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .analysis.export import export_onnx

    info = export_onnx(args.model_dir, args.onnx, modalities=args.modalities, batch_size=args.batch_size,
                       opset=args.opset, check=args.check)
    size = sum(f.stat().st_size for f in Path(args.onnx).parent.glob(Path(args.onnx).name + "*"))
    print(f"wrote {info['path']} (opset {info['opset']}, {size / 1e6:.1f} MB"
          f"{', weights in ' + info['path'] + '.data' if info['external_data'] else ''})")
    print(info["description"])
    if "max_abs_diff" in info:
        print(f"check: onnxruntime vs PyTorch on random inputs, max |difference| of the logits "
              f"{info['max_abs_diff']:.3g}")
    return 0


_COMMANDS: Sequence[Callable[[argparse._SubParsersAction], None]] = (
    _add_demo, _add_data, _add_convert, _add_stats, _add_train, _add_eval, _add_predict, _add_explain, _add_flops,
    _add_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mbt", formatter_class=_Formatter,
        description="MBT, the Multimodal Bottleneck Transformer, in PyTorch.")
    parser.add_argument("--version", action="version", version=f"mbt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "takes_overrides", False):
        args.overrides = extra  # `mbt train CONFIG --section.key value ...`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (MBTError, OSError) as e:
        # Expected failures (a bad file, option or value; a disk that is full) get one line, not a traceback.
        print(f"mbt {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
