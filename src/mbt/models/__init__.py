"""The MBT model and its configuration."""

from .config import CLASSIFIERS, MODALITIES, PRESETS, ConfigError, MBTConfig
from .mbt import MBT, MBTOutput

__all__ = ["MBT", "MBTConfig", "MBTOutput", "ConfigError", "PRESETS", "MODALITIES", "CLASSIFIERS"]
