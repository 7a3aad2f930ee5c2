"""Using a trained model: prediction on files or arrays (predict.py), attention rollout through the model's fusion
plan (rollout.py) and heat maps (explain.py), compute (flops.py: multiply-adds, FLOPs, parameters; the fusion-layer
sweep) and export to ONNX (export.py). It stands on engine (the scoring loop), data and models; only the AV-Digits
application and the CLI sit above it."""

from .explain import explain, explain_video
from .export import describe_io, export_onnx
from .flops import count_flops, flop_count, load_config, parameter_count, plot_sweep, sweep
from .predict import Prediction, find_videos, predict_arrays, predict_files, top_k, write_predictions
from .rollout import Rollout, attention_rollout, record_attention

__all__ = ["count_flops", "flop_count", "parameter_count", "sweep", "plot_sweep", "load_config", "export_onnx",
           "describe_io", "Prediction", "predict_files", "predict_arrays", "find_videos", "top_k",
           "write_predictions", "attention_rollout", "record_attention", "Rollout", "explain", "explain_video"]
