"""Progress without a terminal is plain lines (no carriage returns or escape codes); on a terminal it is tqdm."""

from __future__ import annotations

import io

import mbt.progress as progress_module
from mbt.progress import PlainProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_the_output_is_a_file(monkeypatch):
    monkeypatch.setattr(progress_module, "PLAIN_EVERY", 0.0)
    out = io.StringIO()
    bar = progress_bar(range(4), desc="eval", unit="batch", file=out)
    assert isinstance(bar, PlainProgress)
    assert list(bar) == [0, 1, 2, 3]
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert lines[0].startswith("eval: 1/4 batch (25%), ") and lines[-1].startswith("eval: 4/4 batch (100%)")
    assert lines[-1].endswith("done") and len(lines) == 5  # one per update, and the closing line

    out = io.StringIO()
    bar = progress_bar(total=10, initial=2, desc="train", unit="step", file=out)
    bar.update(3)
    bar.set_postfix(loss="0.5000", refresh=False)
    bar.close()
    assert out.getvalue().splitlines()[-1].startswith("train: 5/10 step (50%)")
    assert out.getvalue().rstrip().endswith("done; loss=0.5000")


def test_a_bar_on_a_terminal_and_nothing_when_disabled():
    assert not isinstance(progress_bar(range(2), file=Terminal()), PlainProgress)
    out = io.StringIO()
    assert list(progress_bar(range(3), disable=True, file=out)) == [0, 1, 2] and out.getvalue() == ""
