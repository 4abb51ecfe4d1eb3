"""The commands of rule-set and config files: apply, save and up."""

from __future__ import annotations

import os
import sys

from .common import dry_run_spec, open_filter, pin_dir, read_text
from .output import PROG, plural

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..model.rulefile import RuleSetSpec
    from .spec import Args


def cmd_apply(args: Args) -> int:
    from ..model.rulefile import parse_ruleset
    from .progress import Display, on_terminal

    spec = parse_ruleset(read_text(args.file), "stdin" if args.file == "-" else args.file)
    if args.dry_run:
        return dry_run_spec(args, spec, "the running firewall is what the file says")
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
    from ..model.rulefile import parse_ruleset
    from ..runtime import applied_base, merged_config, record_applied
    from ..up import config_path, wait_for_interfaces
    from .progress import Display, on_terminal

    path = config_path(args.file)
    name = "stdin" if path == "-" else path
    spec = parse_ruleset(read_text(path), name)
    if args.only is not None and not any(i.name == args.only for i in spec.interfaces):
        from ..errors import UsageError

        raise UsageError(f"{name} names no interface {args.only!r}: 'up --only' attaches one the config names")
    wait_for_interfaces([i for i in spec.interfaces if args.only in (None, i.name)])  # before taking the lock
    if args.dry_run:
        return _up_dry_run(args, spec, name)
    with open_filter(args, create=True, with_program=bool(spec.interfaces), migrate=True) as flt:
        created = flt.created
        previous = None if created else applied_base(flt.state, flt.ruleset)
        merged, rt, where, notes = (spec, None, None, []) if args.no_runtime else \
            merged_config(None if created else flt.state, flt.ruleset, spec, previous)
        record = args.only is None or created
        if record:  # pending until 'up' is done: a kill in between leaves a record that says both
            record_applied(flt.state, spec, previous, pending=True)
        try:
            n = sum(len(v) for v in merged.sets.values())
            with Display(on_terminal()) as disp:
                changes = flt.up(merged, allow_empty=args.allow_empty, only=args.only,
                                 progress=disp.task(f"up: {plural(n, 'set element')}", n))
        except BaseException:
            if record and previous is not None:
                record_applied(flt.state, previous)
            raise
        if record:
            record_applied(flt.state, spec)
        migrated = bool(flt.migrated)
    if created:
        print(f"made the state in {flt.pin_dir}")
    if rt is not None and where != "the running firewall":
        print(f"restored from {where}: {rt.summary()}")
    for note in notes:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    for c in changes:
        if c.action == "missing":
            print(f"{PROG}: {c}", file=sys.stderr)
        else:
            print(c)
    if not changes and not created and not migrated:
        print(f"no change: the firewall and its {plural(len(spec.interfaces), 'interface')} are what {name} says")
    return 0


def _up_dry_run(args: Args, spec: RuleSetSpec, name: str) -> int:
    """``up --dry-run``: what ``up`` would change, changing nothing."""
    from ..errors import NotLoaded, PyxdpError
    from ..model.rulefile import RuleSetSpec as Empty
    from ..runtime import merged_config
    from ..up import missing_interfaces, plan_lines

    try:
        flt = open_filter(args, lock=False)
    except NotLoaded:
        flt = None
    if flt is None:
        merged, _rt, _where, notes = (spec, None, None, []) if args.no_runtime else \
            merged_config(None, Empty, spec)
        lines = [f"would make the state in {pin_dir(args)}"] + [f"would apply: {x}" for x in
                                                                 plan_lines(merged, Empty())]
        todo = [i for i in spec.interfaces if args.only in (None, i.name)]
        absent = missing_interfaces(todo)
        required = [i for i in absent if not i.optional]
        if required:
            raise PyxdpError(f"no interface {', '.join(str(i) for i in required)}: 'up' would fail")
        lines += [f"would attach to {i}: {i.mode} mode" for i in todo if i not in absent]
        lines += [f"{PROG}: warning: {i} is missing (optional): would not be attached" for i in absent]
    else:
        with flt:
            merged, _rt, _where, notes = (spec, None, None, []) if args.no_runtime else \
                merged_config(flt.state, flt.ruleset, spec)
            changes = flt.up(merged, allow_empty=args.allow_empty, only=args.only, dry_run=True)
        lines = [f"{PROG}: {c}" if c.action == "missing" else str(c) for c in changes]
    for note in notes:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    for line in lines:
        print(line, file=sys.stderr if line.startswith(f"{PROG}:") else sys.stdout)
    if not any(not x.startswith(f"{PROG}:") for x in lines):
        print(f"no change: 'up' of {name} would change nothing")
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
