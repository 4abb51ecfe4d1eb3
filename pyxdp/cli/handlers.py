"""``pyxdp-load``: the command line, a thin layer over the public API (:class:`pyxdp.Filter`).

Exit codes: 0 fine, 1 runtime failure, 2 bad usage or input. Errors are one
line on stderr. Imports are kept lazy: a ``deny from X`` (what fail2ban runs
per ban) loads neither pyroute2 nor anything it does not use."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import IO, Any, NoReturn

PROG = "pyxdp-load"


class _Usage(Exception):
    """Bad command line (exit 2)."""


class _Unused:
    """Stands in for the subparsers a call does not name."""

    def add_argument(self, *args: Any, **kwargs: Any) -> None:
        pass


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
        raise _Usage(message)


def _pin_dir(args: argparse.Namespace) -> str:
    from ..store.state import DEFAULT_PIN_DIR

    if args.pin_dir is not None:
        return str(args.pin_dir)
    return os.environ.get("PYXDP_PIN_DIR") or DEFAULT_PIN_DIR


def _open(args: argparse.Namespace, create: bool = False, lock: bool = True, with_program: bool = False,
          migrate: bool = False, force: bool = False) -> Any:
    """The Filter; a command that changes things creates state only when
    it is 'attach' (create=True) or --create was given. ``migrate``: state
    of an older pyxdp is migrated ('attach --reload', 'up') and a line says so."""
    from ..filter import Filter

    flt = Filter.open(_pin_dir(args), create=create or bool(getattr(args, "create", False) and lock), lock=lock,
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


def _emit(obj: Any) -> None:
    import json

    sys.stdout.write(json.dumps(obj, separators=(", ", ": ")) + "\n")


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


# ---- commands ------------------------------------------------------------------


def cmd_attach(args: argparse.Namespace) -> int:
    from ..kernel.xdp import XdpMode, preload

    mode = XdpMode.parse(args.mode)
    loading = preload()  # pyroute2's import overlaps the verifier
    with _open(args, create=True, with_program=True, migrate=args.reload, force=args.force) as flt:
        loading.join()
        a = flt.attach(args.iface, mode=mode, netns=args.netns, force=args.force, reload=args.reload)
    where = f" (netns {a.netns})" if a.netns else ""
    print(f"attached to {a.ifname}{where}: {a.mode} mode, program id {a.prog_id}")
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    with _open(args) as flt:
        removed = flt.detach(args.iface, netns=args.netns, keep=args.keep)
    print(f"detached from {args.iface}" + ("; no interface left, state removed" if removed else ""))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ..errors import NotLoaded, UnreadableState

    try:
        flt = _open(args, lock=False)
    except UnreadableState as exc:
        if args.json:
            _emit({"pin_dir": _pin_dir(args), "loaded": False, "unreadable": str(exc), "running": exc.running,
                   "interfaces": []})
        else:
            print(f"unreadable: {exc}")
        return 1
    except NotLoaded:
        if args.json:
            _emit({"pin_dir": _pin_dir(args), "loaded": False, "interfaces": []})
        else:
            print(f"not loaded ({_pin_dir(args)} holds no state)")
        return 1
    with flt:
        ifaces = flt.interfaces()
        cfg = flt.config()
        sets = flt.sets()
        if args.json:
            _emit({"pin_dir": flt.pin_dir, "loaded": True, "policy": cfg.policy.label,
                   "rules": cfg.nrules, "rule_capacity": flt.rule_capacity, "set_capacity": flt.capacity,
                   "sets": [s.to_dict() for s in sets], "trace_every": cfg.trace_every,
                   "established": cfg.established, "flow_capacity": flt.state.flow_capacity,
                   "interfaces": [a.to_dict() for a in ifaces]})
            return 0
        elements = sum(s.n4 + s.n6 for s in sets)
        print(f"state: {flt.pin_dir}  policy: {cfg.policy.label}  rules: {cfg.nrules}/{flt.rule_capacity}  "
              f"sets: {len(sets)} ({_plural(elements, 'element')}; {flt.capacity} per family)  "
              f"connection state: {'on' if cfg.established else 'off'} (up to {flt.state.flow_capacity} flows)")
        if cfg.trace_every:
            print(f"tracing is on (1 in {cfg.trace_every} packets): a 'trace' is running, or one was killed "
                  "(the next 'pyxdp-load trace' turns it off when it ends)")
        if not ifaces:
            print("no interface attached")
        for a in ifaces:
            ns = f" netns {a.netns}" if a.netns else ""
            cmd = f"{a.ifname}" + (f" --netns {a.netns}" if a.netns else "")
            if a.attached and a.recorded_prog_id:
                state = (f"  (the record says program {a.recorded_prog_id}: a writer was killed part-way; "
                         f"'pyxdp-load attach {cmd}' records what runs)")
            elif a.attached:
                state = ""
            elif a.interrupted:
                state = (f"  (NOT attached: a change of it was killed part-way; 'pyxdp-load attach {cmd}' attaches "
                         f"it, 'pyxdp-load detach {cmd}' forgets it)")
            else:
                state = "  (NOT attached any more)"
            print(f"  {a.ifname} (ifindex {a.ifindex}{ns}): {a.mode}, program id {a.prog_id}{state}")
    return 0


MAX_TEXT = 256 << 20  # characters of a rule-set or config file (about 6 million set elements)
MAX_LINE = 4096  # characters of a line of a prefix file


def _read_text(path: str) -> str:
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


def _lines(fh: IO[str], name: str) -> Iterator[str]:
    """The lines of ``fh``, each at most MAX_LINE characters: a longer one (a
    file without newlines, /dev/zero) is one error line, not a read without end."""
    from ..errors import UsageError

    num = 0
    while line := fh.readline(MAX_LINE + 1):
        num += 1
        if len(line) - line.endswith("\n") > MAX_LINE:
            raise UsageError(f"{name} line {num}: longer than {MAX_LINE} characters (not a file of prefixes, "
                             "one a line?)")
        yield line


def _read_file_prefixes(path: str) -> Iterator[Any]:
    """The prefixes of a file, one by one (a million of them never sit in a list)."""
    from ..errors import UsageError
    from ..model.prefix import read_prefix_lines

    name = "stdin" if path == "-" else path
    try:
        if path == "-":
            yield from read_prefix_lines(_lines(sys.stdin, name), name)
            return
        with open(path, encoding="utf-8") as fh:
            yield from read_prefix_lines(_lines(fh, name), name)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{name}: not a text file") from None


def _chain(first: list[Any], path: str | None) -> Iterator[Any]:
    yield from first
    if path:
        yield from _read_file_prefixes(path)


def cmd_add(args: argparse.Namespace) -> int:
    return _add_rule(args, [args.command, *args.words], None)


def _add_rule(args: argparse.Namespace, words: list[str], position: int | None) -> int:
    from ..errors import RuleExists
    from ..model.rules import parse_rule_words

    rule = parse_rule_words(words)
    with _open(args) as flt:
        try:
            num = flt.add_rule(rule, position)
        except RuleExists as exc:  # as ufw: not an error, nothing changes
            print(f"Skipping adding existing rule (number {exc.number}): {rule}")
            return 0
    if not getattr(args, "quiet", False):
        print(f"rule {num}: {rule}")
    return 0


def cmd_insert(args: argparse.Namespace) -> int:
    return _add_rule(args, args.words, args.position)


def cmd_delete(args: argparse.Namespace) -> int:
    from ..model.prefix import is_digits
    from ..model.rules import parse_rule_words

    words = list(args.words)
    if all(is_digits(w) for w in words):
        with _open(args) as flt:
            n = flt.delete_rules([int(w) for w in words])
        print(f"deleted {_plural(n, 'rule')}")
        return 0
    rule = parse_rule_words(words)
    with _open(args) as flt:
        flt.delete_rules([rule])
    print(f"deleted rule: {rule}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _open(args, lock=False) as flt:
        rules = flt.rules()
        sets = flt.sets()
        policy = flt.policy
    if args.json:
        for r in rules:
            _emit(r.to_dict())
        for st in sets:
            _emit({"set": st.name, "ipv4": st.n4, "ipv6": st.n6})
        return 0
    print(f"policy {policy.label}; rules in order, the first that matches decides:")
    if not rules:
        print("  (no rules)")
    for r in rules:
        print(f"{r.number:5}  {str(r.rule):60} hits {r.packets}")
    for st in sets:
        print(f"set @{st.name}: {_plural(st.n4 + st.n6, 'element')} ('pyxdp-load set list {st.name}')")
    return 0


def _print_members(members: list[Any], as_json: bool) -> None:
    for e in members:
        if as_json:
            _emit(e.to_dict())
        else:
            left = "" if e.expires_in is None else f"  expires in {max(0, int(e.expires_in))}s"
            print(f"{str(e.prefix):43} hits {e.hits}{left}")


def cmd_set(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..model.prefix import parse_prefix, parse_ttl

    op, words = args.op, list(args.words)
    if op == "list":
        with _open(args, lock=False) as flt:
            if words:
                members = flt.set_members(words[0])
                _print_members(members, args.json)
                if not members and not args.json:  # on stderr: stdout stays one element a line for scripts
                    print(f"set @{words[0].lstrip('@')} is empty", file=sys.stderr)
                return 0
            sets = flt.sets()
        for st in sets:
            if args.json:
                _emit(st.to_dict())
            else:
                print(f"@{st.name:31} {st.n4} IPv4, {st.n6} IPv6 elements")
        if not sets and not args.json:
            print("no sets")
        return 0
    if op not in ("add", "remove", "destroy", "flush"):
        raise UsageError(f"bad set operation {op!r}: add, remove, list, flush or destroy")
    if not words:
        raise UsageError(f"set {op}: name the set")
    name, items = words[0], words[1:]
    if op in ("destroy", "flush"):
        if items or args.file:
            raise UsageError(f"set {op} takes only the set's name")
        with _open(args) as flt:
            if op == "destroy":
                flt.set_destroy(name)
                print(f"set @{name} removed")
            else:
                print(f"set @{name}: removed {_plural(flt.set_flush(name), 'element')}")
        return 0
    from ..store.sets import KeySet

    if op == "add":
        ttl = parse_ttl(args.ttl) if args.ttl is not None else None
        keys = KeySet.of(_chain([parse_prefix(w) for w in items], args.file))
        if not len(keys):
            raise UsageError("set add: give prefixes or --file")
        with _open(args) as flt:
            res = flt.set_add(name, keys, ttl=ttl)
        print(f"set @{name}: {_plural(res.added, 'new element')}"
              + (f", {res.refreshed} refreshed" if res.refreshed else "") + (f", ttl {ttl}s" if ttl else ""))
    else:
        if args.ttl is not None:
            raise UsageError("--ttl goes with 'set add'")
        prefixes = list(_chain([parse_prefix(w) for w in items], args.file))
        if not prefixes:
            raise UsageError("set remove: give prefixes or --file")
        with _open(args) as flt:
            res = flt.set_remove(name, prefixes)
        print(f"set @{name}: removed {_plural(res.removed, 'element')}")
    return 0


def cmd_ban(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..model.prefix import parse_prefix, parse_ttl
    from ..model.rules import parse_set_name
    from ..store.sets import KeySet

    parse_set_name(args.set)
    ttl = parse_ttl(args.ttl) if args.ttl is not None else None
    keys = KeySet.of(_chain([parse_prefix(w) for w in args.targets], args.file))
    if not len(keys):
        raise UsageError("ban: give addresses or prefixes, or --file")
    with _open(args) as flt:
        res = flt.ban(keys, ttl=ttl, set=args.set)
    if res.rule:
        print(f"rule {res.rule}: deny from @{args.set} (inserted: no rule used that set yet)")
    if not args.quiet:
        print(f"banned {_plural(res.added, 'new element')} in @{args.set}"
              + (f", {res.refreshed} refreshed" if res.refreshed else "")
              + (f", for {ttl}s" if ttl else ", permanently"))
    return 0


def cmd_unban(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..model.prefix import parse_prefix
    from ..model.rules import parse_set_name

    name = parse_set_name(args.set)
    prefixes = [parse_prefix(w) for w in args.targets]
    if args.file:
        prefixes.extend(_read_file_prefixes(args.file))
    if args.all:
        if prefixes:
            raise UsageError("unban --all takes no addresses")
        with _open(args) as flt:
            n = flt.set_flush(name) if name in {s.name for s in flt.sets()} else 0
        if not args.quiet:
            print(f"unbanned {_plural(n, 'element')} of @{name}")
        return 0
    if not prefixes:
        raise UsageError("unban: give addresses or prefixes, --file, or --all")
    with _open(args) as flt:
        res = flt.unban(prefixes, set=name)
    for p in res.missing:
        print(f"{p} was not banned in @{name}")
    if not args.quiet:
        print(f"unbanned {_plural(res.removed, 'element')} of @{name}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from ..model.rulefile import parse_ruleset

    spec = parse_ruleset(_read_text(args.file), "stdin" if args.file == "-" else args.file)
    with _open(args) as flt:
        flt.apply(spec)
    n = sum(len(v) for v in spec.sets.values())
    print(f"applied {_plural(len(spec.rules), 'rule')}, {_plural(len(spec.sets), 'set')} "
          f"({_plural(n, 'element')})" + (f", policy {spec.policy.label}" if spec.policy is not None else ""))
    if spec.interfaces:
        print(f"note: 'apply' leaves interfaces as they are; 'pyxdp-load up {args.file}' also attaches the file's "
              f"{_plural(len(spec.interfaces), 'interface')} (and detaches others)")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from ..kernel.xdp import preload
    from ..model.rulefile import parse_ruleset
    from ..up import config_path

    path = config_path(args.file)
    name = "stdin" if path == "-" else path
    spec = parse_ruleset(_read_text(path), name)
    loading = preload()  # pyroute2's import overlaps a program load
    with _open(args, create=True, with_program=bool(spec.interfaces), migrate=True) as flt:
        loading.join()
        changes = flt.up(spec, allow_empty=args.allow_empty)
        created = flt.created
        migrated = bool(flt.migrated)
    if created:
        print(f"made the state in {flt.pin_dir}")
    for c in changes:
        print(c)
    if not changes and not created and not migrated:
        print(f"no change: the firewall and its {_plural(len(spec.interfaces), 'interface')} are what {name} says")
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


def cmd_save(args: argparse.Namespace) -> int:
    from ..model.rulefile import format_ruleset
    from ..safefile import write_file_atomic

    with _open(args, lock=False) as flt:
        spec = flt.ruleset(interfaces=args.all)
    text = format_ruleset(spec)
    if args.file in (None, "-"):
        sys.stdout.write(text)
        return 0
    _make_config_dir(args.file)
    write_file_atomic(args.file, text, 0o600)
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..layout import Verdict

    if args.policy is None:
        with _open(args, lock=False) as flt:
            print(flt.policy.label)
        return 0
    if args.policy not in ("pass", "drop"):
        raise UsageError(f"bad policy {args.policy!r}: pass or drop")
    with _open(args) as flt:
        flt.set_policy(Verdict[args.policy.upper()])
    print(f"policy: {args.policy}")
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..model.timeouts import parse_timeout_args

    if args.onoff not in (None, "on", "off"):
        raise UsageError(f"bad state {args.onoff!r}: on or off")
    changes = parse_timeout_args(args.timeout or [])
    if args.onoff is None and not changes:
        with _open(args, lock=False) as flt:
            on, timeouts = flt.established, flt.timeouts()
        if args.json:
            _emit({"established": on, "timeouts": timeouts})
        else:
            print(f"connection state: {'on' if on else 'off'}")
            for name, secs in timeouts.items():
                print(f"  {name:16}{secs:>8} s")
        return 0
    with _open(args) as flt:
        if changes:
            flt.set_timeouts(changes)
        if args.onoff is not None:
            flt.set_established(args.onoff == "on")
        on = flt.established
    done = [f"connection state: {'on' if on else 'off'}"] + [f"{k} = {v} s" for k, v in changes.items()]
    print("; ".join(done))
    return 0


def cmd_flows(args: argparse.Namespace) -> int:
    with _open(args, lock=False) as flt:
        flows = flt.flows()
        on = flt.established
        opened = flt.flows_opened()
    if args.json:
        _emit({"established": on, "flows": [f.to_dict() for f in flows],
               "opened": {f"ipv{fam}": n for fam, n in opened.items()}})
        return 0
    if not on:
        print("connection state is off ('pyxdp-load state on' turns it on)")
    wl = max([len(f.local) for f in flows] + [5]) + 2
    wr = max([len(f.remote) for f in flows] + [6]) + 2
    print(f"{'proto':8}{'local':{wl}}{'remote':{wr}}{'state':13}{'expires in':>12}")
    for f in flows:
        print(f"{f.proto:8}{f.local:{wl}}{f.remote:{wr}}{f.state.label:13}{_duration(f.expires_in):>12}")
    print(f"{_plural(len(flows), 'flow')} tracked; {sum(opened.values())} opened since the state was made")
    return 0


def _duration(secs: float) -> str:
    s = int(secs)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60}m"
    if s >= 60:
        return f"{s // 60}m{s % 60}s"
    return f"{secs:.1f}s"


def cmd_stats(args: argparse.Namespace) -> int:
    with _open(args, lock=False) as flt:
        st = flt.stats()
    if args.json:
        _emit({"stats": [ln.to_dict() for ln in st.lines], "lost_events": st.lost_events})
        return 0
    w = max([len(ln.interface) for ln in st.lines] + [9]) + 2
    print(f"{'interface':{w}}{'verdict':8}{'reason':12}{'packets':>14}{'bytes':>16}")
    for ln in sorted(st.lines, key=lambda ln: (ln.interface, ln.verdict, ln.reason)):
        print(f"{ln.interface or '-':{w}}{ln.verdict.label:8}{ln.reason.label:12}{ln.packets:>14}{ln.bytes:>16}")
    print(f"lost trace events: {st.lost_events}")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from ..errors import UsageError

    if args.count is not None and args.count < 1:
        raise UsageError("--count must be 1 or more")
    import signal

    # SIGTERM (systemd, timeout, kill) ends the loop like Ctrl-C: the tracer
    # then turns tracing off on its way out instead of leaving it on. Once on
    # the way out, further signals are ignored so that the cleanup finishes.
    def _stop(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.exit(128 + signum)

    from contextlib import ExitStack

    from ..model.pcap import open_capture
    from ..observe import TraceFilter, TracePcap

    match = TraceFilter.make(args.verdict, args.src, args.port, args.rule)
    to_stdout = args.pcap == "-"  # the capture goes to stdout instead of the lines
    if to_stdout and args.json:
        raise UsageError("--pcap - writes the capture to stdout: leave out --json, or give a file")
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    seen = 0
    pcap: TracePcap | None = None
    with ExitStack() as stack:
        flt = stack.enter_context(_open(args, lock=False))
        n = len(flt.rules()) if args.rule is not None else 0
        if args.rule is not None and args.rule > n:
            raise UsageError(f"--rule {args.rule}: there is no rule {args.rule} ({_plural(n, 'rule')}; "
                             "see 'pyxdp-load list')")
        if args.pcap is not None:
            out = sys.stdout.buffer if to_stdout else stack.enter_context(open_capture(args.pcap))
            pcap = TracePcap(out)
        tr = stack.enter_context(flt.trace(args.sample, match if match else None))
        if not args.json:
            only = f", only {match}" if match else ""
            into = f", packets into {'stdout' if to_stdout else args.pcap}" if pcap else ""
            print(f"tracing 1 in {args.sample} packets{only}{into} (Ctrl-C stops)", file=sys.stderr, flush=True)
        try:
            for ev in tr:
                if pcap is not None:
                    pcap.write(ev)
                if args.json:
                    _emit(ev.to_dict())
                    sys.stdout.flush()
                elif not to_stdout:
                    print(ev, flush=True)
                seen += 1
                if args.count is not None and seen >= args.count:
                    break
        finally:
            if pcap is not None and not args.json:
                skipped = f"; {_plural(pcap.skipped, 'packet')} came without bytes" if pcap.skipped else ""
                print(f"{_plural(pcap.count, 'packet')} written to {'stdout' if to_stdout else args.pcap}{skipped}",
                      file=sys.stderr, flush=True)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..model.pcap import read_pcap_records

    try:
        fh: IO[bytes] = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    counts: dict[str, int] = {}
    bad = 0
    with fh, _open(args, lock=False) as flt, flt.tester() as tester:
        rules = {r.id: str(r.rule) for r in flt.rules()}
        for rec in read_pcap_records(fh, args.file):
            if rec.error:
                bad += 1
                if args.json:
                    _emit({"packet": rec.number, "error": rec.error})
                else:
                    print(f"{rec.number:6} skipped: {rec.error}")
                continue
            r = tester.run(rec.data, rec.number)
            counts[r.verdict.label] = counts.get(r.verdict.label, 0) + 1
            if args.json:
                _emit(r.to_dict())
            else:
                ev = r.event
                desc = ev.flow if ev else f"{r.length} bytes"
                rule = f"  (rule {ev.rule}: {rules.get(ev.rule_id, '?')})" if ev and ev.rule else ""
                print(f"{r.number:6} {r.verdict.label:4} {r.reason.label:11} {desc}{rule}")
    total = sum(counts.values())
    if args.json:
        _emit({"summary": True, "packets": total, "pass": counts.get("pass", 0), "drop": counts.get("drop", 0),
               "skipped": bad})
    else:
        print(f"{total} packets: {counts.get('pass', 0)} pass, {counts.get('drop', 0)} drop"
              + (f"; {bad} skipped" if bad else ""))
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from ..kernel.anyobject import load_object
    from ..kernel.xdp import XdpMode

    prog_id, mode = load_object(args.object, args.iface, program=args.program, mode=XdpMode.parse(args.mode),
                                netns=args.netns, force=args.force)
    print(f"loaded {os.path.basename(args.object)} on {args.iface}: {mode.value} mode, program id {prog_id}")
    return 0


def cmd_unload(args: argparse.Namespace) -> int:
    from ..kernel.anyobject import unload

    prog_id = unload(args.iface, netns=args.netns)
    print(f"unloaded program {prog_id} from {args.iface}")
    return 0


def cmd_printk(args: argparse.Namespace) -> int:
    from ..kernel.anyobject import trace_pipe

    for n, line in enumerate(trace_pipe(), 1):
        print(line, flush=True)
        if args.count is not None and n >= args.count:
            break
    return 0


def _needs(module: str, extra: str, exc: ImportError) -> int:
    """A command whose optional dependency is missing: one line, exit 1."""
    if (exc.name or "").split(".")[0] != module:
        raise exc
    return _fail(f"this command needs {module}: pip install 'pyxdp[{extra}]' (or {module} itself)", 1)


def cmd_exporter(args: argparse.Namespace) -> int:
    try:
        from .exporter import serve
    except ImportError as exc:
        return _needs("prometheus_client", "exporter", exc)
    return serve(_pin_dir(args), args.listen)


def cmd_top(args: argparse.Namespace) -> int:
    import math

    from ..errors import UsageError

    if not (math.isfinite(args.interval) and 0.1 <= args.interval <= 3600):
        raise UsageError(f"--interval must be 0.1 to 3600 seconds, not {args.interval:g}")
    if args.sample < 0:
        raise UsageError("--sample must be 0 (no tracing) or more")
    try:
        from .top import run
    except ImportError as exc:
        return _needs("rich", "top", exc)
    with _open(args, lock=False) as flt:
        return run(flt, interval=args.interval, sample=args.sample, once=args.once)


# ---- parser -----------------------------------------------------------------


COMMANDS = ("attach", "detach", "status", "allow", "deny", "insert", "delete", "list", "set", "ban", "unban", "apply",
            "save", "up", "policy", "state", "flows", "stats", "trace", "replay", "load", "unload", "printk",
            "exporter", "top")


def _first_word(argv: Sequence[str]) -> str | None:
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


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (after global options), if any."""
    word = _first_word(argv)
    return word if word in COMMANDS else None


def _changes(args: argparse.Namespace) -> bool:
    """Whether the command changes the firewall (and so writes audit records)."""
    c = args.command
    if c == "set":
        return getattr(args, "op", None) != "list"
    if c == "policy":
        return getattr(args, "policy", None) is not None
    if c == "state":
        return getattr(args, "onoff", None) is not None or bool(getattr(args, "timeout", None))
    if c == "top":
        return bool(getattr(args, "sample", 0))
    return c in ("attach", "detach", "allow", "deny", "insert", "delete", "ban", "unban", "apply", "up", "trace")


def _audit_to(args: argparse.Namespace) -> None:
    """Audit records of this call go to syslog (when there is one) and --log-file."""
    from ..audit import install, syslog_socket

    install(args.log_file, syslog_socket(), PROG)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``only`` one subcommand's (building all
    fifteen costs more than a fail2ban call should)."""
    p = _Parser(prog=PROG, description="Load and manage the pyxdp XDP packet filter.")
    p.add_argument("--pin-dir", help="state directory on bpffs (default /sys/fs/bpf/pyxdp, or $PYXDP_PIN_DIR)")
    p.add_argument("--create", action="store_true",
                   help="let a change make the state when there is none yet (before any attach)")
    p.add_argument("--log-file", metavar="PATH", help="also append each change's audit line to PATH (changes go "
                   "to syslog, facility auth, whenever /dev/log exists)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def cmd(name: str, func: Any, help: str) -> Any:
        if only is not None and name != only:
            return _Unused()
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        return sp

    def netns(sp: Any) -> None:
        sp.add_argument("--netns", metavar="NAME", help="the interface is in network namespace NAME (ip netns)")

    def mode(sp: Any) -> None:
        sp.add_argument("--mode", default="auto", help="auto (native, else generic), native or generic")
        sp.add_argument("--force", action="store_true", help="replace an XDP program that is not ours")

    sp = cmd("attach", cmd_attach, "load the filter (once) and attach it to an interface")
    sp.add_argument("iface")
    mode(sp)
    netns(sp)
    sp.add_argument("--capacity", type=_positive, help="set elements per family when state is created "
                    "(default 1048576; memory is used only for elements present)")
    sp.add_argument("--reload", action="store_true", help="load the program afresh (after an upgrade)")
    sp.add_argument("--rules", type=_positive, help="rule capacity when state is created: a multiple of 64, "
                    "at most 8192 (default 1024)")
    sp.add_argument("--flows", type=_positive, help="tracked connections per family when state is created "
                    "(default 65536; the least recently used goes when full)")

    sp = cmd("detach", cmd_detach, "detach the filter from an interface (the last one removes the state)")
    sp.add_argument("iface")
    netns(sp)
    sp.add_argument("--keep", action="store_true", help="keep the state even when no interface is left")

    sp = cmd("status", cmd_status, "attached interfaces, policy, rules and sets (exit 1: no state)")
    sp.add_argument("--json", action="store_true")

    for name in ("allow", "deny"):
        sp = cmd(name, cmd_add, f"append a rule, in ufw's grammar: '{name} 22/tcp', '{name} from PREFIX', "
                 f"'{name} [proto P] [from A [port P]] [to B [port P]] [on IFACE]'")
        sp.add_argument("words", nargs="+", metavar="WORD")
        sp.add_argument("-q", "--quiet", action="store_true")

    sp = cmd("insert", cmd_insert, "insert a rule before rule number N: 'insert N allow|deny ...'")
    sp.add_argument("position", type=_positive)
    sp.add_argument("words", nargs="+", metavar="WORD")

    sp = cmd("delete", cmd_delete, "delete rules: by number ('delete 2 5') or by their words ('delete allow 22/tcp')")
    sp.add_argument("words", nargs="+", metavar="WORD")

    sp = cmd("list", cmd_list, "the policy, the numbered rules with hit counts, and the sets")
    sp.add_argument("--json", action="store_true")

    sp = cmd("set", cmd_set, "named sets of prefixes for rules: 'add NAME PREFIX... [--ttl T] [--file F]', "
             "'remove NAME PREFIX...', 'list [NAME]', 'flush NAME', 'destroy NAME'")
    sp.add_argument("op", metavar="add|remove|list|flush|destroy")
    sp.add_argument("words", nargs="*", metavar="WORD")
    sp.add_argument("--file", help="prefixes, one per line ('-': stdin); all or nothing")
    sp.add_argument("--ttl", help="elements added expire after SECONDS (or 10m, 2h, 1d); 0: never")
    sp.add_argument("--json", action="store_true")

    for name, func, what in (("ban", cmd_ban, "add to a set that a 'deny from @SET' rule drops (inserted as "
                              "rule 1 when no rule uses the set yet)"),
                             ("unban", cmd_unban, "remove from that set (an address not banned is not an error)")):
        sp = cmd(name, func, what)
        sp.add_argument("targets", nargs="*", metavar="ADDR|PREFIX")
        sp.add_argument("--file", help="prefixes, one per line ('-': stdin); all or nothing")
        sp.add_argument("--set", default="banned", help="the set (default: banned)")
        sp.add_argument("-q", "--quiet", action="store_true")
        if name == "ban":
            sp.add_argument("--ttl", help="lift the ban after SECONDS (or 10m, 2h, 1d); none or 0: permanent")
        else:
            sp.add_argument("--all", action="store_true", help="empty the set")

    sp = cmd("apply", cmd_apply, "make the firewall (policy, rules, sets with their elements) what a TOML file "
             "says, in one step")
    sp.add_argument("file", help="the rule-set file ('-': stdin)")

    sp = cmd("save", cmd_save, "write the running firewall as a file that 'apply' reads")
    sp.add_argument("file", nargs="?", help="where (default: stdout)")
    sp.add_argument("--all", action="store_true", help="also the interfaces it is attached to (those that "
                    "still exist): the config file that 'up' reads")

    sp = cmd("up", cmd_up, "make the firewall and the interfaces it runs on what the config file says: apply "
             "rules and sets, attach, detach what the file no longer names (a second run changes nothing)")
    sp.add_argument("file", nargs="?", help="the config file ('-': stdin; default $PYXDP_CONFIG, else "
                    "/etc/pyxdp/pyxdp.toml)")
    sp.add_argument("--capacity", type=_positive, help="set elements per family when state is created "
                    "(default 1048576)")
    sp.add_argument("--rules", type=_positive, help="rule capacity when state is created: a multiple of 64, "
                    "at most 8192 (default 1024)")
    sp.add_argument("--allow-empty", action="store_true", help="let a config that names no interface detach "
                    "every attached one (refused otherwise: an empty file would leave the host unfiltered)")

    sp = cmd("policy", cmd_policy, "show or set the default policy for unmatched packets: pass or drop")
    sp.add_argument("policy", nargs="?")

    sp = cmd("state", cmd_state, "connection state: show it, or turn it on/off ('state off'), or set timeouts "
             "('state --timeout udp=60')")
    sp.add_argument("onoff", nargs="?", metavar="on|off")
    sp.add_argument("--timeout", action="append", metavar="NAME=SECONDS",
                    help="tcp_syn_sent, tcp_established, tcp_fin, tcp_close, udp, udp_stream, icmp (repeatable)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("flows", cmd_flows, "the connections the host opened that are tracked now (their replies pass)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("stats", cmd_stats, "packets and bytes per verdict and reason")
    sp.add_argument("--json", action="store_true")

    sp = cmd("trace", cmd_trace, "one line per packet with its verdict (sampled)")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--count", type=_integer, help="exit after N events")
    sp.add_argument("--sample", type=_positive, default=1, help="trace one packet in N (default 1)")
    sp.add_argument("--verdict", choices=("pass", "drop"), help="only packets given this verdict")
    sp.add_argument("--from", dest="src", metavar="PREFIX",
                    help="only packets whose source address lies in PREFIX (IPv4 or IPv6; an address: that host)")
    sp.add_argument("--port", metavar="PORTS",
                    help="only TCP/UDP packets with this source or destination port (N, LOW:HIGH or a list)")
    sp.add_argument("--rule", type=_positive, metavar="N", help="only packets that rule number N decided")
    sp.add_argument("--pcap", metavar="FILE",
                    help="also write each traced packet's first 128 bytes to a pcap file ('-': stdout, instead "
                    "of the lines)")

    sp = cmd("replay", cmd_replay, "what the loaded filter does to each packet of a pcap file")
    sp.add_argument("file", help="a pcap file ('-': stdin)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("load", cmd_load, "attach any precompiled XDP object (e.g. examples/packets.bpf.o)")
    sp.add_argument("object")
    sp.add_argument("iface")
    sp.add_argument("--program", help="program name in the object (default: the first)")
    mode(sp)
    netns(sp)

    sp = cmd("unload", cmd_unload, "detach the XDP program that 'load' attached")
    sp.add_argument("iface")
    netns(sp)

    sp = cmd("printk", cmd_printk, "stream bpf_printk output (trace_pipe; mounts tracefs when missing)")
    sp.add_argument("--count", type=_integer, help="exit after N lines")

    sp = cmd("exporter", cmd_exporter, "serve Prometheus metrics of the state over HTTP until SIGTERM or Ctrl-C")
    sp.add_argument("--listen", default="127.0.0.1:9436", metavar="ADDR:PORT",
                    help="address and port to serve on ([V6]:PORT for IPv6; default 127.0.0.1:9436)")

    sp = cmd("top", cmd_top, "live view: packets and bits per second by interface, verdict and reason; busiest "
             "rules; top dropped sources (Ctrl-C quits)")
    sp.add_argument("--interval", type=_number, default=1.0, metavar="SECONDS",
                    help="refresh every SECONDS (default 1)")
    sp.add_argument("--sample", type=_integer, default=100, metavar="N",
                    help="trace one packet in N for the dropped sources (default 100; 0: no tracing)")
    sp.add_argument("--once", action="store_true", help="print one snapshot (two readings an interval apart) "
                    "as plain text and exit")
    return p


def _ascii_digits(text: str) -> bool:
    """Digits 0-9 only: int() and str.isdigit() also take '٣' or '²'."""
    return text.isascii() and text.isdigit()


def _positive(text: str) -> int:
    if not _ascii_digits(text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)


def _integer(text: str) -> int:
    """A whole number in ASCII digits, with an optional '-' (checked by the command)."""
    if not _ascii_digits(text[1:] if text.startswith("-") else text):
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(text)


def _number(text: str) -> float:
    """A decimal number in ASCII ('1', '0.5', '2e-1'; its range is the
    command's to check): float() also takes '٣'."""
    if not text.isascii():
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        word = _command_word(argv)
        if word is None and any(w in ("reject", "limit") for w in argv if not w.startswith("-")):
            raise _Usage("'reject' and 'limit' are not supported: XDP can allow or deny (drop)")
        if word is not None and ("-h" in argv or "--help" in argv):
            word = None
        if _first_word(argv) is None and "-h" not in argv and "--help" not in argv:
            sys.stderr.write(build_parser().format_help())  # no command: what there is to do
            return 2
        args = build_parser(word).parse_args(argv)
        if _changes(args):
            _audit_to(args)
        return int(args.func(args))
    except _Usage as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - every error ends as one line
        from ..errors import UsageError

        if isinstance(exc, UsageError):
            return _fail(str(exc), 2)
        if isinstance(exc, PermissionError) and not getattr(exc, "what", None):
            return _fail(str(exc) if "root" in str(exc) else f"permission denied: {exc}", 1)
        if os.environ.get("PYXDP_DEBUG"):
            raise
        return _fail(_describe(exc), 1)


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


def _fail(msg: str, code: int) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return code


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
