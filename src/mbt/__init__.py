"""mbt: the Multimodal Bottleneck Transformer (Nagrani et al., NeurIPS 2021) in PyTorch.

    import mbt
    config = mbt.MBTConfig.from_preset("mbt-b16x2", num_classes=10)
    model = mbt.MBT(config).eval()
    out = model({"rgb": rgb, "spectrogram": spec})   # rgb (B, 3, 32, 224, 224), spec (B, 1, 800, 128)
    out.logits                                       # (B, 10)
"""

from .models import MBT, ConfigError, MBTConfig, MBTOutput, PRESETS

__version__ = "0.1.0"

__all__ = ["MBT", "MBTConfig", "MBTOutput", "ConfigError", "PRESETS", "__version__"]
