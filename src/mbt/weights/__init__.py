"""Weights: model directories (config.json + model.safetensors) and conversion of Scenic checkpoints."""

from .io import CheckpointError, load_model_dir, save_model_dir
from .scenic import (convert_checkpoint, infer_config, read_flax_checkpoint, scenic_params_from_checkpoint,
                     scenic_to_state_dict, state_dict_to_scenic)

__all__ = ["CheckpointError", "load_model_dir", "save_model_dir", "convert_checkpoint", "infer_config",
           "read_flax_checkpoint", "scenic_params_from_checkpoint", "scenic_to_state_dict", "state_dict_to_scenic"]
