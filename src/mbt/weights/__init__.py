"""Foreign weights into MBT: conversion of Scenic (Flax) checkpoints into model directories (scenic.py), and
initialisation from ImageNet ViT weights (vit.py: vision_transformer / big_vision .npz, timm state dicts), and of
each stream from its own pretrained encoder (streams.py: a ViT, an AST checkpoint read by ast.py, or a stream of an
mbt model directory). Model directories themselves are read and written beside the model (`mbt.models.pretrained`)."""

from ..errors import CheckpointError
from .scenic import (convert_checkpoint, infer_config, scenic_data_config, read_flax_checkpoint, scenic_params_from_checkpoint,
                     scenic_to_state_dict, state_dict_to_scenic)
from .ast import read_ast_checkpoint
from .streams import InitReport, MBTEncoder, init_streams, input_differences, read_encoder
from .vit import ViTInitReport, ViTWeights, init_from_vit, read_vit_checkpoint

__all__ = ["CheckpointError", "convert_checkpoint", "scenic_data_config", "infer_config",
           "read_flax_checkpoint", "scenic_params_from_checkpoint", "scenic_to_state_dict", "state_dict_to_scenic",
           "ViTWeights", "ViTInitReport", "read_vit_checkpoint", "init_from_vit", "read_ast_checkpoint",
           "InitReport", "MBTEncoder", "init_streams", "input_differences", "read_encoder"]
