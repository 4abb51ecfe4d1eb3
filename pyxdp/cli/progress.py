"""A progress bar on the terminal for long work (issue 23): reading a big
prefix file, writing or reading many set elements. Only when the work is big
and stderr is a terminal, and never under ``--json``: piped, or under
fail2ban, a command prints what it always printed. rich is imported only when
a bar is drawn (its import costs more than a whole ``ban X``)."""

from __future__ import annotations

import os
import stat
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType
    from typing import Any

BIG = 100_000  # elements: fewer are written or read in well under a second
BIG_FILE = 2 << 20  # bytes of a prefix file: about 150,000 addresses


def on_terminal(as_json: bool = False) -> bool:
    return not as_json and sys.stderr.isatty()


def file_size(path: str | None) -> int:
    """The size of a regular file ``path`` (0: none, stdin, or not a regular file)."""
    if not path or path == "-":
        return 0
    try:
        st = os.stat(path)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def _count(n: float, unit: str) -> str:
    return f"{n / (1 << 20):,.1f} MiB" if unit == "B" else f"{n:,.0f}"


class Display:
    """Progress on stderr for one command: each :meth:`task` big enough gets
    a line (what, bar, done/total, rate, time) while ``on`` (a terminal, no
    --json); rich is imported at the first such task. Left on the screen
    when done."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self._p: Any = None

    def __enter__(self) -> Display:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._p is not None:
            self._p.stop()

    def task(self, what: str, total: int, unit: str = "", big: int = BIG) -> Callable[[int, int], None] | None:
        """The ``(done, total)`` callback of a task (``unit`` "B": bytes), or
        None when no line is drawn for it (off, or ``total`` below ``big``)."""
        if not self.on or total < big:
            return None
        if self._p is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[counts]}"),
                               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                               console=Console(stderr=True), transient=False)
            self._p.start()
        p = self._p
        tid = p.add_task(what, total=total, counts=f"0/{_count(total, unit)}", rate="")
        start = time.monotonic()

        def update(done: int, total: int) -> None:
            took = time.monotonic() - start
            rate = f"{_count(done / took, unit)}{'' if unit else ' elements'}/s" if took > 0.05 else ""
            p.update(tid, completed=done, total=total, counts=f"{_count(done, unit)}/{_count(total, unit)}",
                     rate=rate)

        return update
