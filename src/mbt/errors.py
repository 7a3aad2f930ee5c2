"""Every error mbt raises on purpose derives from `MBTError`; its message names the file, the field or the value,
and the fix. The `mbt` command catches `MBTError` once and prints its message as one line (exit status 1); anything
else is a bug and keeps its traceback.

Each class also derives from the built-in exception a caller would expect (`ValueError` for a bad value,
`FileNotFoundError` for a missing path, ...), so `except ValueError` keeps working.

    MBTError
    ├── ConfigError        an invalid configuration (MBTConfig, DataConfig, run config, command-line option)
    ├── CheckpointError    a weights file or training checkpoint that cannot be read or does not fit
    ├── AnnotationError    a malformed annotation file (names file:line)
    ├── MediaError         a media file that cannot be used (names the file and the reason)
    ├── InputError         inputs that do not fit the model or the metric (shapes, classes, nothing to score)
    ├── MissingFileError   a path that does not exist
    ├── DependencyError    an optional package is not installed (names the extra to install)
    ├── NonFiniteError     NaN or inf where a number must be finite (training diverged, a tensor to be saved)
    ├── AVDigitsError      AV-Digits cannot be generated (a missing source package, an unusable output folder)
    └── SpeechError        eSpeak NG is missing or refused a voice
"""

from __future__ import annotations

from pathlib import Path


class MBTError(Exception):
    """The base of every error mbt raises on purpose."""


class ConfigError(MBTError, ValueError):
    """An invalid configuration. The message names the field, the value and what is allowed."""


class CheckpointError(MBTError, ValueError):
    """A weights file that cannot be read or does not fit the model. The message names the file and the key."""


class AnnotationError(MBTError, ValueError):
    """A malformed annotation file; the message names the file, the line and the fix."""


class MediaError(MBTError):
    """A media file that cannot be used. `str(error)` is '<path>: <reason>'."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # DataLoader workers pickle errors; keep (path, reason)
        return (type(self), (self.path, self.reason))


class InputError(MBTError, ValueError):
    """Inputs that do not fit: tensor shapes, label spaces, an empty evaluation, an unknown output format."""


class MissingFileError(MBTError, FileNotFoundError):
    """A file or folder that does not exist; the message names it and what was expected there."""


class DependencyError(MBTError, ImportError):
    """An optional dependency is missing; the message names the pip extra that installs it."""


class NonFiniteError(MBTError, FloatingPointError):
    """NaN or inf where only finite numbers may go: repeated non-finite training steps, or a tensor about to be
    saved. The message names the tensor or the steps and the files of their batches."""


class AVDigitsError(MBTError, RuntimeError):
    """A missing source package or an unusable output folder; the message says how to fix it."""


class SpeechError(MBTError, RuntimeError):
    """eSpeak NG is missing or refused a voice; the message says how to fix it."""


__all__ = ["MBTError", "ConfigError", "CheckpointError", "AnnotationError", "MediaError", "InputError",
           "MissingFileError", "DependencyError", "NonFiniteError", "AVDigitsError", "SpeechError"]
