"""The commands of rule-set and config files: apply, save and up."""

from __future__ import annotations

import os
import sys

from .common import open_filter, read_text
from .output import plural

TYPE_CHECKING = False
if TYPE_CHECKING:

    from .spec import Args


def cmd_apply(args: Args) -> int:
    from ..model.rulefile import parse_ruleset
    from .progress import Display, on_terminal

    spec = parse_ruleset(read_text(args.file), "stdin" if args.file == "-" else args.file)
    if args.dry_run:
        from ..model.rulefile import diff_rulesets

        with open_filter(args, lock=False) as flt:
            changes = diff_rulesets(flt.ruleset(), spec)
        for line in changes or ["the running firewall is what the file says"]:
            print(f"dry run: {line}")
        print("dry run: nothing changed")
        return 0
    n = sum(len(v) for v in spec.sets.values())
    with open_filter(args) as flt, Display(on_terminal()) as disp:
        flt.apply(spec, progress=disp.task(f"apply: {plural(n, 'set element')}", n))
    print(f"applied {plural(len(spec.rules), 'rule')}, {plural(len(spec.sets), 'set')} "
          f"({plural(n, 'element')})" + (f", policy {spec.policy.label}" if spec.policy is not None else ""))
    if spec.interfaces:
        print(f"note: 'apply' leaves interfaces as they are; 'pyxdp-load up {args.file}' also attaches the file's "
              f"{plural(len(spec.interfaces), 'interface')} (and detaches others)")
    return 0


def cmd_up(args: Args) -> int:
    from ..kernel.xdp import preload
    from ..model.rulefile import parse_ruleset
    from ..up import config_path
    from .progress import Display, on_terminal

    path = config_path(args.file)
    name = "stdin" if path == "-" else path
    spec = parse_ruleset(read_text(path), name)
    loading = preload()  # pyroute2's import overlaps a program load
    with open_filter(args, create=True, with_program=bool(spec.interfaces), migrate=True) as flt:
        loading.join()
        n = sum(len(v) for v in spec.sets.values())
        with Display(on_terminal()) as disp:
            changes = flt.up(spec, allow_empty=args.allow_empty,
                             progress=disp.task(f"up: {plural(n, 'set element')}", n))
        created = flt.created
        migrated = bool(flt.migrated)
    if created:
        print(f"made the state in {flt.pin_dir}")
    for c in changes:
        print(c)
    if not changes and not created and not migrated:
        print(f"no change: the firewall and its {plural(len(spec.interfaces), 'interface')} are what {name} says")
    return 0


def _make_config_dir(path: str) -> None:
    """pyxdp's own config directory (/etc/pyxdp), when ``path`` is in it and
    it is missing: made mode 0755 (the writer's: root). Any other missing
    directory is the caller's to make (write_file_atomic says how)."""
    from .. import up as config
    from ..errors import UsageError

    parent = os.path.dirname(os.path.abspath(path))
    if parent != config.CONFIG_DIR or os.path.lexists(parent):
        return
    try:
        os.mkdir(parent, 0o755)
        os.chmod(parent, 0o755)  # whatever the umask
    except OSError as exc:
        raise UsageError(f"cannot make {parent}: {exc.strerror}") from None


def cmd_save(args: Args) -> int:
    from ..model.rulefile import format_ruleset
    from ..safefile import write_file_atomic
    from .progress import Display, on_terminal

    with open_filter(args, lock=False) as flt, Display(on_terminal()) as disp:
        n = sum(s.n4 + s.n6 for s in flt.sets(exact=False))
        # to stdout on the terminal itself, the bar would mix with the text
        show = args.file not in (None, "-") or not sys.stdout.isatty()
        spec = flt.ruleset(interfaces=args.all, progress=disp.task("save: read", n) if show else None)
    text = format_ruleset(spec)
    if args.file in (None, "-"):
        sys.stdout.write(text)
        return 0
    _make_config_dir(args.file)
    write_file_atomic(args.file, text, 0o600)
    return 0
