"""Words for people: a count with its noun (what the CLI prints and what
:mod:`pyxdp.up` reports). Imports nothing."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 rule``, ``2 rules``; ``many``: a plural that is not word + 's'."""
    return f"{n} {word if n == 1 else many or word + 's'}"
