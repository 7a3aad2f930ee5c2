"""Progress that suits where it is shown: tqdm's bar on a terminal; plain lines when the output goes to a file or a
pipe (a log of `mbt train ... 2> train.log`, CI), where a bar's carriage returns and escape codes would pile up.

    for batch in progress_bar(loader, desc="eval", unit="batch"):
        ...
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable

from tqdm.auto import tqdm

PLAIN_EVERY = 30.0  # seconds between plain progress lines


class PlainProgress:
    """The part of tqdm's interface mbt uses (iteration, update, set_postfix, close), printed as a plain line at
    most every PLAIN_EVERY seconds and once at the end: 'train: 120/1860 step (6%), 2.1 min, ~30.4 min left'."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, file: Any = None, **_: Any) -> None:
        self.iterable, self.desc, self.unit, self.n = iterable, desc, unit, initial
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.file = file or sys.stderr
        self.start = self.last = time.monotonic()
        self.initial, self.postfix, self.closed = initial, "", False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= PLAIN_EVERY:
            self.last = now
            self._print()

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def _print(self, done: bool = False) -> None:
        elapsed = time.monotonic() - self.start
        text = f"{self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {elapsed / 60:.1f} min"
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        if not done and self.total and rate > 0:
            text += f", ~{(self.total - self.n) / rate / 60:.1f} min left"
        if done:
            text += ", done"
        if self.postfix:
            text += f"; {self.postfix}"
        print(text, file=self.file, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n > self.initial:
                self._print(done=True)


def progress_bar(iterable: Iterable | None = None, *, disable: bool = False, **kwargs: Any):
    """tqdm(iterable, **kwargs) on a terminal, PlainProgress otherwise (`disable`: nothing at all)."""
    stream = kwargs.get("file") or sys.stderr
    if disable or (hasattr(stream, "isatty") and stream.isatty()):
        return tqdm(iterable, disable=disable, **kwargs)
    return PlainProgress(iterable, **kwargs)


__all__ = ["progress_bar", "PlainProgress"]
