"""The MBT model (mbt.py: blocks, tokenizers, the fusion plan, the model), its configuration (config.py: MBTConfig,
presets, the names of modalities, streams and tasks) and its model directories (pretrained.py: config.json +
model.safetensors, written atomically). The bottom layer: it imports nothing else of mbt but `mbt.errors`."""

from ..errors import ConfigError
from .config import CLASSIFIERS, MODALITIES, PRESETS, MBTConfig
from .mbt import MBT, MBTOutput
from .pretrained import read_model_dir, save_model_dir

__all__ = ["MBT", "MBTConfig", "MBTOutput", "ConfigError", "PRESETS", "MODALITIES", "CLASSIFIERS", "read_model_dir",
           "save_model_dir"]
