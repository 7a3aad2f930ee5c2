"""Training and evaluation: run configs (config.py), losses, optimisers and schedule, the `Trainer` (trainer.py: one
CPU or many GPUs with torchrun), resumable checkpoints, multi-clip evaluation (evaluate.py) and metrics. It sits
above `mbt.data`, `mbt.weights` and `mbt.models` and imports nothing from the layers above (analysis, avdigits, cli).

    from mbt.engine import RunConfig, train
    cfg = RunConfig.from_yaml("configs/audioset_mini.yaml", ["--train.output_dir", "runs/as"])
    model_dir = train(cfg)                     # runs/as/model: config.json + model.safetensors + preprocessor
"""

from .config import DatasetConfig, InitConfig, OptimConfig, RunConfig, SplitConfig, TrainConfig, task_of
from .evaluate import evaluate_conditions, evaluate_dataset, predict_dataset, score, write_results
from .losses import mbt_loss, per_example_loss, smooth_labels
from .metrics import compute_metrics
from .optim import lr_factor, make_optimizer, make_scheduler
from .trainer import Trainer, train

__all__ = ["DatasetConfig", "InitConfig", "OptimConfig", "RunConfig", "SplitConfig", "TrainConfig", "task_of",
           "evaluate_dataset", "evaluate_conditions", "predict_dataset", "score", "write_results", "mbt_loss",
           "per_example_loss", "smooth_labels", "compute_metrics", "lr_factor", "make_optimizer", "make_scheduler",
           "Trainer", "train"]
