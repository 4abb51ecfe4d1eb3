"""``pyxdp-load``: the command line. The commands are listed once, in
:mod:`pyxdp.cli.spec`; :mod:`pyxdp.cli.main` reads the command line and
imports only the named command's handlers (attach, rules, sets, observe,
files); what they print goes through :mod:`pyxdp.cli.output`."""

from __future__ import annotations

from .main import entry_point, main

__all__ = ["entry_point", "main"]
