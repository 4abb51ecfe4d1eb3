"""The argparse parser, built from the command table (:mod:`pyxdp.cli.spec`):
the whole of it for help, or one command's for a call (building all of them
costs more than a fail2ban call should)."""

from __future__ import annotations

import argparse
import os

from ..errors import UsageError
from .output import PROG
from .spec import TABLE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter asks shutil for the terminal width on every
    argument added (importing shutil costs 2 ms); $COLUMNS or 100 will do."""

    def __init__(self, prog: str) -> None:
        cols = os.environ.get("COLUMNS", "")
        super().__init__(prog, width=int(cols) - 2 if cols.isascii() and cols.isdigit() and int(cols) > 40 else 98)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``only`` one command's."""
    p = _Parser(prog=PROG, description="Load and manage the pyxdp XDP packet filter.")
    p.add_argument("--pin-dir", help="state directory on bpffs (default /sys/fs/bpf/pyxdp, or $PYXDP_PIN_DIR)")
    p.add_argument("--create", action="store_true",
                   help="let a change make the state when there is none yet (before any attach)")
    p.add_argument("--log-file", metavar="PATH", help="also append each change's audit line to PATH (changes go "
                   "to syslog, facility auth, whenever /dev/log exists)")
    p.add_argument("--dry-run", action="store_true", help="say what a change would do and change nothing (as "
                   "ufw's --dry-run; rule, set, ban, policy, state, reset and apply commands)")
    from .. import __version__

    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for cmd in TABLE.values():
        if only is None or cmd.name == only:
            sp = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
            cmd.arguments(sp)
            if cmd.dry_run:  # also after the command's name ('up --dry-run'); unset, it leaves the global one be
                sp.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                                help="say what it would change, and change nothing")
    return p
