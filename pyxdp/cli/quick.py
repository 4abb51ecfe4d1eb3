"""The plain forms of ``ban`` and ``unban`` (what fail2ban and people type)
read without argparse, whose import and parser cost about as much again as
the ban itself: ``[--pin-dir D] [--create] [--log-file F] ban|unban
[options] [--] ADDR... [options]``. Anything else (help, an abbreviated or
'--opt=value' option, a value or address that starts with '-', addresses
on both sides of an option) is left to argparse, which gives the same
result for these forms (tests/unit/test_cli_spec.py compares the two)."""

from __future__ import annotations

from .spec import Args

_GLOBAL = {"--pin-dir": "pin_dir", "--log-file": "log_file"}
_VALUES = {"--set": "set", "--file": "file"}


def _plain(word: str) -> bool:
    """Not an option to argparse either ('-' alone is stdin for --file)."""
    return word == "-" or not word.startswith("-")


def parse_quick(argv: list[str], command: str) -> Args | None:
    """The arguments of a plain ``ban`` or ``unban`` call, or None: argparse reads it."""
    values: dict[str, object] = {"pin_dir": None, "create": False, "log_file": None, "dry_run": False}
    i = 0
    while argv[i] != command:  # the global options before the command
        word = argv[i]
        if word == "--create":
            values["create"] = True
            i += 1
        elif word in _GLOBAL and i + 1 < len(argv) and _plain(argv[i + 1]):
            values[_GLOBAL[word]] = argv[i + 1]
            i += 2
        else:
            return None
    opts = dict(_VALUES, **({"--ttl": "ttl"} if command == "ban" else {}))
    values.update(command=command, targets=[], file=None, set="banned", quiet=False)
    values.update({"ttl": None} if command == "ban" else {"all": False})
    targets: list[str] = []
    run = "before"  # the addresses: not yet, being read, read (no more may follow)
    rest = argv[i + 1:]
    j = 0
    while j < len(rest):
        word = rest[j]
        if word == "--":
            if run == "after" or "--" in rest[j + 1:]:
                return None
            targets += rest[j + 1:]
            break
        if _plain(word):
            if run == "after":
                return None
            run = "in"
            targets.append(word)
            j += 1
            continue
        if run == "in":
            run = "after"
        if word in ("-q", "--quiet"):
            values["quiet"] = True
        elif word == "--all" and command == "unban":
            values["all"] = True
        elif word in opts and j + 1 < len(rest) and _plain(rest[j + 1]):
            values[opts[word]] = rest[j + 1]
            j += 1
        else:
            return None
        j += 1
    values["targets"] = targets
    return Args(**values)
