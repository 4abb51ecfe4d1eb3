"""What the command handlers share: the pin directory, opening the Filter,
and reading rule-set and prefix files within bounds."""

from __future__ import annotations

import os
import sys

from .output import PROG, fail

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import IO, Any

    from .spec import Args


def pin_dir(args: Args) -> str:
    from ..store.state import DEFAULT_PIN_DIR

    if args.pin_dir is not None:
        return str(args.pin_dir)
    return os.environ.get("PYXDP_PIN_DIR") or DEFAULT_PIN_DIR


def open_filter(args: Args, create: bool = False, lock: bool = True, with_program: bool = False,
                migrate: bool = False, force: bool = False) -> Any:
    """The Filter; a command that changes things creates state only when
    it is 'attach' (create=True) or --create was given. ``migrate``: state
    of an older pyxdp is migrated ('attach --reload', 'up') and a line says so."""
    from ..filter import Filter

    flt = Filter.open(pin_dir(args), create=create or bool(getattr(args, "create", False) and lock), lock=lock,
                      capacity=getattr(args, "capacity", None), with_program=with_program,
                      flows=getattr(args, "flows", None), rules=getattr(args, "rules", None), migrate=migrate,
                      force=force)
    if flt.recovered:
        print(f"{PROG}: {flt.recovered}", file=sys.stderr)
    if flt.migrated:
        from ..layout import PYXDP_LAYOUT

        print(f"migrated the state in {flt.pin_dir} from layout {flt.migrated} to {PYXDP_LAYOUT}: rules, sets and "
              "elements kept; every attached interface runs the new program")
    return flt


MAX_TEXT = 256 << 20  # characters of a rule-set or config file (about 6 million set elements)
MAX_LINE = 4096  # characters of a line of a prefix file


def read_text(path: str) -> str:
    """A rule-set or config file ('-': stdin), read in chunks: a NUL (no TOML
    holds one: /dev/zero) or more than MAX_TEXT characters is one error line
    instead of reading on until memory runs out."""
    from ..errors import UsageError

    name = "stdin" if path == "-" else path
    try:
        fh = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115 - closed below
        try:
            parts: list[str] = []
            size = 0
            while chunk := fh.read(1 << 20):
                if "\0" in chunk:
                    raise UsageError(f"{name}: not a text file (it holds a NUL character)")
                size += len(chunk)
                if size > MAX_TEXT:
                    raise UsageError(f"{name}: longer than {MAX_TEXT >> 20} MiB, refused (give big sets with "
                                     "'set add NAME --file', which reads a line at a time)")
                parts.append(chunk)
            return "".join(parts)
        finally:
            if fh is not sys.stdin:
                fh.close()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{name}: not a text file") from None


def _lines(fh: IO[str], name: str, on_read: Callable[[int, int], None] | None = None,
           size: int = 0) -> Iterator[str]:
    """The lines of ``fh``, each at most MAX_LINE characters: a longer one (a
    file without newlines, /dev/zero) is one error line, not a read without end.
    ``on_read(characters read, size)`` every 16,384 lines and at the end."""
    from ..errors import UsageError

    num = got = 0
    while line := fh.readline(MAX_LINE + 1):
        num += 1
        got += len(line)
        if len(line) - line.endswith("\n") > MAX_LINE:
            raise UsageError(f"{name} line {num}: longer than {MAX_LINE} characters (not a file of prefixes, "
                             "one a line?)")
        if on_read is not None and not num % 16384:
            on_read(got, max(size, got))
        yield line
    if on_read is not None:
        on_read(got, got)


def read_file_prefixes(path: str, on_read: Callable[[int, int], None] | None = None, size: int = 0) -> Iterator[Any]:
    """The prefixes of a file, one by one (a million of them never sit in a list);
    ``on_read``: see :func:`_lines` (``size``: the file's, as far as known)."""
    from ..errors import UsageError
    from ..model.prefix import read_prefix_lines

    name = "stdin" if path == "-" else path
    try:
        if path == "-":
            yield from read_prefix_lines(_lines(sys.stdin, name, on_read, size), name)
            return
        with open(path, encoding="utf-8") as fh:
            yield from read_prefix_lines(_lines(fh, name, on_read, size), name)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{name}: not a text file") from None


def chain(first: list[Any], path: str | None, on_read: Callable[[int, int], None] | None = None,
          size: int = 0) -> Iterator[Any]:
    yield from first
    if path:
        yield from read_file_prefixes(path, on_read, size)


def dry_run_report(lines: list[str], none: str) -> int:
    """--dry-run's answer: a line per change (``none`` when there is none),
    then that nothing changed; exit 0."""
    for line in lines or [none]:
        print(f"dry run: {line}")
    print("dry run: nothing changed")
    return 0


def dry_run_spec(args: Args, spec: Any, none: str) -> int:
    """--dry-run of a command that makes the firewall ``spec`` (a RuleSetSpec): what would change."""
    from ..model.rulefile import diff_rulesets

    with open_filter(args, lock=False) as flt:
        changes = diff_rulesets(flt.ruleset(), spec)
    return dry_run_report(changes, none)


def needs(module: str, extra: str, exc: ImportError) -> int:
    """A command whose optional dependency is missing: one line, exit 1."""
    if (exc.name or "").split(".")[0] != module:
        raise exc
    return fail(f"this command needs {module}: pip install 'pyxdp[{extra}]' (or {module} itself)", 1)
