"""What the commands print, in one place: the program's name, JSON lines,
counted words, durations and the one error line."""

from __future__ import annotations

import sys

from ..text import plural as plural  # the handlers' counted words, here with the rest of what they print

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROG = "pyxdp-load"


def emit(obj: Any) -> None:
    import json

    sys.stdout.write(json.dumps(obj, separators=(", ", ": ")) + "\n")


def duration(secs: float) -> str:
    s = int(secs)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60}m"
    if s >= 60:
        return f"{s // 60}m{s % 60}s"
    return f"{secs:.1f}s"


def fail(msg: str, code: int) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return code
