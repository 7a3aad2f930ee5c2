"""Weights: model directories (config.json + model.safetensors), conversion of Scenic checkpoints, and
initialisation from ImageNet ViT weights (vision_transformer / big_vision .npz, timm state dicts)."""

from .io import CheckpointError, load_model_dir, save_model_dir
from .scenic import (convert_checkpoint, infer_config, read_flax_checkpoint, scenic_params_from_checkpoint,
                     scenic_to_state_dict, state_dict_to_scenic)
from .vit import ViTInitReport, ViTWeights, init_from_vit, read_vit_checkpoint

__all__ = ["CheckpointError", "load_model_dir", "save_model_dir", "convert_checkpoint", "infer_config",
           "read_flax_checkpoint", "scenic_params_from_checkpoint", "scenic_to_state_dict", "state_dict_to_scenic",
           "ViTWeights", "ViTInitReport", "read_vit_checkpoint", "init_from_vit"]
