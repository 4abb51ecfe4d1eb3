"""``pyxdp-load``'s entry: reads the command line, runs the command's
handler and turns every error into one line.

Exit codes: 0 fine, 1 runtime failure, 2 bad usage or input. Imports are
kept lazy: a ``ban X`` or ``deny from X`` (what fail2ban runs per ban) loads
neither argparse nor pyroute2 nor anything else it does not use; the
commands are listed once, in :mod:`pyxdp.cli.spec`."""

from __future__ import annotations

import os
import sys

from .output import PROG, fail
from .spec import TABLE, Args

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def first_word(argv: Sequence[str]) -> str | None:
    """The first word of ``argv`` that is not a global option or its value."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in ("--pin-dir", "--log-file"):
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def _audit_to(args: Args) -> None:
    """Audit records of this call go to syslog (when there is one) and --log-file."""
    from ..audit import install, syslog_socket

    install(args.log_file, syslog_socket(), PROG)


def _parse(argv: list[str]) -> Args | None:
    """The command line read, or None when there is no command (argparse's help then says what there is)."""
    from ..errors import UsageError

    first = first_word(argv)
    word = first if first in TABLE else None
    helping = "-h" in argv or "--help" in argv
    if word is None and any(w in ("reject", "limit") for w in argv if not w.startswith("-")):
        raise UsageError("'reject' and 'limit' are not supported: XDP can allow or deny (drop)")
    if first == "route":
        raise UsageError("'route' rules are not supported yet: rules apply to every packet arriving on an attached "
                         "interface, forwarded ones included")
    if first is None and not helping:
        return None
    if word in ("ban", "unban") and not helping:
        from .quick import parse_quick

        args = parse_quick(argv, word)
        if args is not None:
            return args
    from .parser import build_parser

    return build_parser(None if helping else word).parse_args(argv, namespace=Args())


def main(argv: Sequence[str] | None = None) -> int:
    try:
        words = list(sys.argv[1:] if argv is None else argv)
        if "--version" in words and first_word(words) is None and not {"-h", "--help"} & set(words):
            from .. import __version__  # the package's __init__, loaded already: no other import

            print(f"{PROG} {__version__}")
            return 0
        args = _parse(words)
        if args is None:
            from .parser import build_parser

            sys.stderr.write(build_parser().format_help())  # no command: what there is to do
            return 2
        cmd = TABLE[args.command]
        if getattr(args, "dry_run", False) and cmd.changes_with(args) and not cmd.dry_run:
            from ..errors import UsageError

            raise UsageError(f"--dry-run is not supported by '{cmd.name}' (the rule, set, ban, policy, state, reset "
                             "and apply commands have it)")
        if cmd.changes_with(args) and not getattr(args, "dry_run", False):
            _audit_to(args)
        module, _, func = cmd.handler.partition(":")
        from importlib import import_module

        return int(getattr(import_module(f"{__package__}.{module}"), func)(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - every error ends as one line
        from ..errors import UsageError

        if isinstance(exc, UsageError):
            return fail(str(exc), 2)
        if isinstance(exc, PermissionError) and not getattr(exc, "what", None):
            return fail(str(exc) if "root" in str(exc) else f"permission denied: {exc}", 1)
        if os.environ.get("PYXDP_DEBUG"):
            raise
        return fail(_describe(exc), 1)


def _describe(exc: BaseException) -> str:
    from ..errors import PyxdpError, VerifierError

    if isinstance(exc, VerifierError):
        from ..safefile import write_private_temp

        try:
            return f"{exc} (verifier log: {write_private_temp('pyxdp-verifier-', exc.log)})"
        except PyxdpError:
            return str(exc)
    if isinstance(exc, PyxdpError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
