"""``pyxdp-load import ufw``: an existing ufw's rules and policy as pyxdp's
(printed as a rule-set file, or applied with ``--apply``), with one note per
rule or setting that is not carried over exactly."""

from __future__ import annotations

import os
import sys

from .common import open_filter
from .output import PROG, plural

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .spec import Args

# where ufw keeps them (0.35 and later), relative to the root; ufw before 0.35 kept the rules in lib/ufw
RULES = (("etc/ufw/user.rules", "lib/ufw/user.rules"), ("etc/ufw/user6.rules", "lib/ufw/user6.rules"))
DEFAULTS = "etc/default/ufw"
CONF = "etc/ufw/ufw.conf"
MAX_FILE = 64 << 20


def _read(root: str, rel: str) -> str | None:
    from ..errors import UsageError

    path = os.path.join(root, rel)
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read(MAX_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if len(text) > MAX_FILE or "\0" in text:
        raise UsageError(f"{path}: not a ufw rules file (a NUL, or more than {MAX_FILE >> 20} MiB)")
    return text


def cmd_import(args: Args) -> int:
    from ..errors import UsageError
    from ..model.rulefile import RuleSetSpec, format_ruleset
    from ..model.ufw import convert

    if args.source != "ufw":
        raise UsageError(f"import from {args.source!r}: only 'ufw' is known")
    root = args.ufw_dir
    texts = []
    for names in RULES:
        found = [t for t in (_read(root, n) for n in names) if t is not None]
        texts.append(found[0] if found else None)
    if texts[0] is None:
        raise UsageError(f"no ufw rules under {root} ({os.path.join(root, RULES[0][0])} is missing)")
    defaults = _read(root, DEFAULTS)
    if defaults is None:
        raise UsageError(f"no ufw policies under {root} ({os.path.join(root, DEFAULTS)} is missing)")
    got = convert(texts[0], texts[1], defaults, _read(root, CONF))
    for note in got.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    if not args.apply:
        sys.stdout.write(f"# imported from ufw ({root})\n")
        sys.stdout.write(format_ruleset(RuleSetSpec(got.rules, policy=got.policy)))
        return 0
    with open_filter(args) as flt:
        spec = flt.ruleset()._replace(rules=got.rules, policy=got.policy)  # the sets stay as they are
        flt.apply(spec)
    policy = got.policy.label if got.policy is not None else "kept"
    print(f"imported {plural(len(got.rules), 'rule')} from ufw, policy {policy}"
          + (f"; {plural(len(got.notes), 'note')} above" if got.notes else ""))
    return 0
