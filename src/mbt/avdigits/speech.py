"""Spoken words from eSpeak NG, through the library and voices that the `espeakng-loader` wheel ships.

No system package and no download: `pip install -e ".[demo]" in a clone` brings the shared library and its data. The
synthesiser is a process-wide C library, so `Speaker` is one object per process (`speaker()`).
"""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

from ..errors import SpeechError

# espeak_Initialize output modes (speak_lib.h): synchronous synthesis into our callback.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_PARAMETER (speak_lib.h)
_RATE, _PITCH = 1, 3

# English accents (espeak-ng-data/lang/gmw). Each voice is an accent with a speaker variant ('en-us+m3').
ACCENTS = ("en", "en-us", "en-us-nyc", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
           "en-029")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _loader():
    try:
        import espeakng_loader
    except ImportError:
        raise SpeechError("spoken digits need eSpeak NG from the espeakng-loader package: "
                          'pip install -e ".[demo]" in a clone (or pip install espeakng-loader)') from None
    return espeakng_loader


def variants() -> list[str]:
    """The speaker variants shipped with eSpeak NG (espeak-ng-data/voices/!v), sorted."""
    folder = os.path.join(_loader().get_data_path(), "voices", "!v")
    return sorted(name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name)))


class Speaker:
    """Text -> int16 mono waveform at `sample_rate` (22,050 Hz), with a voice, speed and pitch per call."""

    def __init__(self) -> None:
        loader = _loader()
        self._lib = ctypes.CDLL(loader.get_library_path())
        self.sample_rate = int(self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                                           loader.get_data_path().encode(), 0))
        if self.sample_rate <= 0:
            raise SpeechError(f"eSpeak NG failed to initialise from {loader.get_data_path()}")
        self._chunks: list[np.ndarray] = []
        proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = proto(self._collect)  # kept alive as long as the library may call it
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    def _collect(self, wav, n, events) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # continue

    def say(self, text: str, voice: str = "en", rate: int = 175, pitch: int = 50) -> np.ndarray:
        """int16 (n,): `text` spoken by `voice` ('accent+variant'), `rate` in words per minute (80-450),
        `pitch` 0-100."""
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise SpeechError(f"eSpeak NG has no voice {voice!r}; accents: {', '.join(ACCENTS)}; variants: "
                                  "mbt.data.speech.variants()")
            self._lib.espeak_SetParameter(_RATE, int(rate), 0)
            self._lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            self._chunks.clear()
            data = text.encode()
            self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, 0, None, None)
            return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


_SPEAKER: Speaker | None = None


def speaker() -> Speaker:
    """The process's Speaker (eSpeak NG keeps global state)."""
    global _SPEAKER
    if _SPEAKER is None:
        _SPEAKER = Speaker()
    return _SPEAKER
