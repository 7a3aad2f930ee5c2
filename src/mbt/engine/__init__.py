"""Training and evaluation: run configs, losses, the training loop (one CPU or many GPUs with torchrun),
resumable checkpoints, multi-clip evaluation and metrics.

    from mbt.engine import RunConfig, train
    cfg = RunConfig.from_yaml("configs/audioset_mini.yaml", ["--train.output_dir", "runs/as"])
    model_dir = train(cfg)                     # runs/as/model: config.json + model.safetensors + preprocessor
"""

from .config import DatasetConfig, InitConfig, OptimConfig, RunConfig, SplitConfig, TrainConfig
from .evaluate import evaluate_dataset, predict_dataset, score, write_results
from .losses import mbt_loss, per_example_loss, smooth_labels
from .metrics import compute_metrics
from .optim import lr_factor, make_optimizer, make_scheduler
from .trainer import read_split, train

__all__ = ["DatasetConfig", "InitConfig", "OptimConfig", "RunConfig", "SplitConfig", "TrainConfig",
           "evaluate_dataset", "predict_dataset", "score", "write_results", "mbt_loss", "per_example_loss",
           "smooth_labels", "compute_metrics", "lr_factor", "make_optimizer", "make_scheduler", "read_split",
           "train"]
