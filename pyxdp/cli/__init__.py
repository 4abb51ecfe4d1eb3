"""``pyxdp-load``: the command line (see :mod:`pyxdp.cli.handlers`)."""

from __future__ import annotations

from .handlers import entry_point, main

__all__ = ["entry_point", "main"]
