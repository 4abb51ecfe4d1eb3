"""``pyxdp-load``: the command line, a thin layer over the public API.

Exit codes: 0 fine, 1 runtime failure, 2 bad usage or input. Errors are one
line on stderr. Imports are kept lazy: a ``deny from X`` (what fail2ban runs
per ban) loads neither pyroute2 nor anything it does not use."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator, Sequence

from ._record import TYPE_CHECKING

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
        super().__init__(prog, width=int(cols) - 2 if cols.isdigit() and int(cols) > 40 else 98)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise _Usage(message)


def _pin_dir(args: argparse.Namespace) -> str:
    from .filter import DEFAULT_PIN_DIR

    return str(args.pin_dir or os.environ.get("PYXDP_PIN_DIR") or DEFAULT_PIN_DIR)


def _open(args: argparse.Namespace, create: bool = False, lock: bool = True, with_program: bool = False) -> Any:
    from .filter import Filter

    return Filter.open(_pin_dir(args), create=create, lock=lock, capacity=getattr(args, "capacity", None),
                       with_program=with_program, rules=getattr(args, "rules", None))


def _emit(obj: Any) -> None:
    import json

    sys.stdout.write(json.dumps(obj, separators=(", ", ": ")) + "\n")


# ---- commands ------------------------------------------------------------------


def cmd_attach(args: argparse.Namespace) -> int:
    from .xdp import XdpMode, preload

    mode = XdpMode.parse(args.mode)
    loading = preload()  # pyroute2's import overlaps the verifier
    with _open(args, create=True, with_program=True) as flt:
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
    from .errors import NotLoaded

    try:
        flt = _open(args, lock=False)
    except NotLoaded:
        if args.json:
            _emit({"pin_dir": _pin_dir(args), "loaded": False, "interfaces": []})
        else:
            print(f"not loaded ({_pin_dir(args)} holds no state)")
        return 0
    with flt:
        ifaces = flt.interfaces()
        cfg = flt.config()
        n = len(flt.entries()) if not args.json else None
        if args.json:
            _emit({"pin_dir": flt.pin_dir, "loaded": True, "policy": cfg.policy.label,
                   "capacity": flt.capacity, "rules": cfg.nrules, "rule_capacity": flt.rule_capacity,
                   "trace_every": cfg.trace_every,
                   "interfaces": [a.to_dict() for a in ifaces]})
            return 0
        print(f"state: {flt.pin_dir}  policy: {cfg.policy.label}  entries: {n}  capacity: {flt.capacity}/family"
              f"  rules: {cfg.nrules}/{flt.rule_capacity}")
        if cfg.trace_every:
            print(f"tracing is on (1 in {cfg.trace_every} packets): a 'trace' is running, or one was killed "
                  "(the next 'pyxdp-load trace' turns it off when it ends)")
        if not ifaces:
            print("no interface attached")
        for a in ifaces:
            ns = f" netns {a.netns}" if a.netns else ""
            state = "" if a.attached else "  (NOT attached any more)"
            print(f"  {a.ifname} (ifindex {a.ifindex}{ns}): {a.mode}, program id {a.prog_id}{state}")
    return 0


def _read_file_prefixes(path: str) -> Iterator[Any]:
    from .entries import read_prefix_lines
    from .errors import UsageError

    if path == "-":
        try:
            yield from read_prefix_lines(sys.stdin, "stdin")
        except UnicodeDecodeError:
            raise UsageError("stdin: not a text file") from None
        return
    try:
        with open(path, encoding="utf-8") as fh:
            yield from read_prefix_lines(fh, path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text file") from None


_PORT_RANGE = re.compile(r"\d+:\d+\Z")


def _is_rule(words: list[str]) -> bool:
    """Whether ``words`` (after allow/deny) are a rule rather than the simple
    entry forms: source prefixes only, or destination ports only."""
    for i, w in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w == "on" or w.startswith("@") or _PORT_RANGE.match(w):
            return True
        if (w == "proto" and nxt not in ("tcp", "udp")) or (w == "to" and nxt != "any"):
            return True
    has_port = any(w == "port" or w[:1].isdigit() and "." not in w and ":" not in w for w in words)
    # a source with a port, a protocol without one, or nothing concrete at all
    # ('deny from any') is beyond the simple forms
    concrete = any(w[:1].isdigit() or ":" in w for w in words)
    return ("from" in words and has_port) or ("proto" in words and not has_port) or not concrete


def _entry_targets(words: list[str]) -> list[Any] | None:
    """The entries that ``words`` name, or None when they are a rule."""
    from .entries import parse_entry_words

    return None if _is_rule(words) else parse_entry_words(words)


def cmd_add(args: argparse.Namespace) -> int:
    from .entries import parse_action, parse_ttl
    from .errors import UsageError

    action = parse_action(args.command)
    ttl = parse_ttl(args.ttl) if args.ttl is not None else None
    targets = _entry_targets(args.words) if args.words else []
    if targets is None:  # not a simple entry: a rule
        if ttl is not None or args.file:
            raise UsageError("--ttl and --file are for simple entries ('from PREFIX', 'PORT/PROTO'), not rules")
        return _add_rule(args, [args.command, *args.words], None)
    if args.file:
        targets.extend(_read_file_prefixes(args.file))
    if not targets:
        raise UsageError(f"{args.command}: nothing to add (give 'from ADDRESS', 'PORT/PROTO', a rule, or --file)")
    with _open(args, create=True) as flt:
        n = flt.add_targets(targets, action, ttl)
    if not args.quiet:
        print(f"{args.command}: {n} entr{'y' if n == 1 else 'ies'}" + (f", ttl {ttl}s" if ttl else ""))
    return 0


def _add_rule(args: argparse.Namespace, words: list[str], position: int | None) -> int:
    from .rules import parse_rule_words

    rule = parse_rule_words(words)
    with _open(args, create=True) as flt:
        num = flt.add_rule(rule, position)
    if not getattr(args, "quiet", False):
        print(f"rule {num}: {rule}")
    return 0


def cmd_insert(args: argparse.Namespace) -> int:
    return _add_rule(args, args.words, args.position)


def cmd_delete(args: argparse.Namespace) -> int:
    from .entries import parse_action
    from .errors import UsageError
    from .layout import Action
    from .rules import parse_rule_words

    words = list(args.words)
    if all(w.isdigit() for w in words):
        with _open(args) as flt:
            n = flt.delete_rules([int(w) for w in words])
        print(f"deleted {n} rule{'' if n == 1 else 's'}")
        return 0
    action = Action.NONE
    rest = words[1:] if words and words[0] in ("allow", "deny") else words
    targets = _entry_targets(rest)
    if targets is None:
        rule = parse_rule_words(words)
        with _open(args) as flt:
            flt.delete_rules([rule])
        print(f"deleted rule: {rule}")
        return 0
    if rest is not words:
        action = parse_action(words[0])
    with _open(args) as flt:
        try:
            n = flt.delete(targets, action)
        except UsageError:
            # no such entry; the same words may name a rule (made with 'insert')
            if rest is words or parse_rule_words(words) not in [r.rule for r in flt.rules()]:
                raise
            flt.delete_rules([parse_rule_words(words)])
            print(f"deleted rule: {' '.join(words)}")
            return 0
    print(f"deleted {n} entr{'y' if n == 1 else 'ies'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _open(args, lock=False) as flt:
        states = flt.entries()
        rules = flt.rules()
    if args.json:
        for s in states:
            _emit(s.to_dict())
        for r in rules:
            _emit(r.to_dict())
        return 0
    if not states and not rules:
        print("no entries, no rules")
    for s in states:
        left = "" if s.expires_in is None else (
            "  expired" if s.expires_in <= 0 else f"  expires in {int(s.expires_in)}s")
        what = f"from {s.target}" if s.target.kind == "src" else str(s.target)
        print(f"{s.action.name.lower():5} {what:45} hits {s.hits}{left}")
    if rules:
        print(("\n" if states else "") + "rules (after the entries; the first that matches decides):")
    for r in rules:
        print(f"{r.number:5}  {str(r.rule):60} hits {r.packets}")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    from .entries import parse_prefix
    from .errors import UsageError

    op, words = args.op, list(args.words)
    if op == "list":
        with _open(args, lock=False) as flt:
            if words:
                members = flt.set_members(words[0])
                for p in members:
                    _emit(str(p)) if args.json else print(p)
                return 0
            sets = flt.sets()
        for st in sets:
            if args.json:
                _emit(st.to_dict())
            else:
                print(f"@{st.name:31} {st.n4} IPv4, {st.n6} IPv6 prefixes")
        if not sets and not args.json:
            print("no sets")
        return 0
    if not words:
        raise UsageError(f"set {op}: name the set")
    name, items = words[0], words[1:]
    if op == "destroy":
        if items or args.file:
            raise UsageError("set destroy takes only the set's name")
        with _open(args) as flt:
            flt.set_destroy(name)
        print(f"set @{name} removed")
        return 0
    prefixes = [parse_prefix(w) for w in items]
    if args.file:
        prefixes.extend(_read_file_prefixes(args.file))
    if op == "add":
        with _open(args, create=True) as flt:
            n = flt.set_add(name, prefixes)
        print(f"set @{name}: {n} new prefix{'' if n == 1 else 'es'}")
    elif op == "remove":
        if not prefixes:
            raise UsageError("set remove: give prefixes or --file")
        with _open(args) as flt:
            n = flt.set_remove(name, prefixes)
        print(f"set @{name}: removed {n} prefix{'' if n == 1 else 'es'}")
    else:
        raise UsageError(f"bad set operation {op!r}: add, remove, list or destroy")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from .errors import UsageError
    from .layout import Verdict
    from .rules import parse_ruleset
    from .ruleset import RuleSetSpec

    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as fh:
                text = fh.read()
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{args.file}: not a text file") from None
    rules, sets, policy = parse_ruleset(text, "stdin" if args.file == "-" else args.file)
    spec = RuleSetSpec(tuple(rules), sets, Verdict[policy.upper()] if policy else None)
    with _open(args, create=True) as flt:
        flt.apply(spec)
    print(f"applied {len(rules)} rule{'' if len(rules) == 1 else 's'}, {len(sets)} set{'' if len(sets) == 1 else 's'}"
          + (f", policy {policy}" if policy else ""))
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    from .errors import UsageError
    from .rules import format_ruleset

    with _open(args, lock=False) as flt:
        spec = flt.ruleset()
    text = format_ruleset(spec.rules, spec.sets, spec.policy.label if spec.policy is not None else None)
    if args.file in (None, "-"):
        sys.stdout.write(text)
        return 0
    tmp = args.file + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, args.file)
    except OSError as exc:
        raise UsageError(f"cannot write {args.file}: {exc.strerror}") from None
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from .errors import UsageError
    from .layout import Verdict

    if args.policy is None:
        with _open(args, lock=False) as flt:
            print(flt.policy.label)
        return 0
    if args.policy not in ("pass", "drop"):
        raise UsageError(f"bad policy {args.policy!r}: pass or drop")
    with _open(args, create=True) as flt:
        flt.set_policy(Verdict[args.policy.upper()])
    print(f"policy: {args.policy}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with _open(args, lock=False) as flt:
        st = flt.stats()
    if args.json:
        _emit({"stats": [ln.to_dict() for ln in st.lines], "lost_events": st.lost_events})
        return 0
    print(f"{'verdict':8}{'reason':12}{'packets':>14}{'bytes':>16}")
    for ln in sorted(st.lines, key=lambda ln: (ln.verdict, ln.reason)):
        print(f"{ln.verdict.label:8}{ln.reason.label:12}{ln.packets:>14}{ln.bytes:>16}")
    print(f"lost trace events: {st.lost_events}")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from .errors import UsageError

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

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    seen = 0
    with _open(args, lock=False) as flt, flt.trace(args.sample) as tr:
        if not args.json:
            print(f"tracing 1 in {args.sample} packets (Ctrl-C stops)", file=sys.stderr, flush=True)
        for ev in tr:
            if args.json:
                _emit(ev.to_dict())
            else:
                print(ev)
            sys.stdout.flush()
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .errors import UsageError
    from .pcap import read_pcap

    try:
        fh: IO[bytes] = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    counts: dict[str, int] = {}
    with fh, _open(args, lock=False) as flt:
        packets = list(read_pcap(fh, args.file))
        rules = {r.id: str(r.rule) for r in flt.rules()}
        for r in flt.replay(packets):
            counts[r.verdict.label] = counts.get(r.verdict.label, 0) + 1
            if args.json:
                _emit(r.to_dict())
            else:
                ev = r.event
                desc = ev.flow if ev else f"{r.length} bytes"
                rule = f"  (rule {ev.rule}: {rules.get(ev.rule_id, '?')})" if ev and ev.rule else ""
                print(f"{r.number:6} {r.verdict.label:4} {r.reason.label:10} {desc}{rule}")
    total = sum(counts.values())
    if args.json:
        _emit({"summary": True, "packets": total, "pass": counts.get("pass", 0), "drop": counts.get("drop", 0)})
    else:
        print(f"{total} packets: {counts.get('pass', 0)} pass, {counts.get('drop', 0)} drop")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    with _open(args) as flt:
        n = flt.sweep()
    print(f"removed {n} expired entr{'y' if n == 1 else 'ies'}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from .generic import load_object
    from .xdp import XdpMode

    prog_id, mode = load_object(args.object, args.iface, program=args.program, mode=XdpMode.parse(args.mode),
                                netns=args.netns, force=args.force)
    print(f"loaded {os.path.basename(args.object)} on {args.iface}: {mode.value} mode, program id {prog_id}")
    return 0


def cmd_unload(args: argparse.Namespace) -> int:
    from .generic import unload

    prog_id = unload(args.iface, netns=args.netns)
    print(f"unloaded program {prog_id} from {args.iface}")
    return 0


def cmd_printk(args: argparse.Namespace) -> int:
    from .generic import trace_pipe

    for n, line in enumerate(trace_pipe(), 1):
        print(line, flush=True)
        if args.count is not None and n >= args.count:
            break
    return 0


# ---- parser -----------------------------------------------------------------


COMMANDS = ("attach", "detach", "status", "allow", "deny", "insert", "delete", "list", "set", "apply", "save",
            "policy", "stats", "trace", "replay", "sweep", "load", "unload", "printk")


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (after global options), if any."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--pin-dir":
            skip = True
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``only`` one subcommand's (building all
    fifteen costs more than a fail2ban call should)."""
    p = _Parser(prog=PROG, description="Load and manage the pyxdp XDP packet filter.")
    p.add_argument("--pin-dir", help="state directory on bpffs (default /sys/fs/bpf/pyxdp, or $PYXDP_PIN_DIR)")
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
    sp.add_argument("--capacity", type=_positive, help="prefix entries per family when state is created "
                    "(default 1048576; memory is used only for entries present)")
    sp.add_argument("--reload", action="store_true", help="load the program afresh (after an upgrade)")
    sp.add_argument("--rules", type=_positive, help="rule capacity when state is created: a multiple of 64, "
                    "at most 8192 (default 1024)")

    sp = cmd("detach", cmd_detach, "detach the filter from an interface (the last one removes the state)")
    sp.add_argument("iface")
    netns(sp)
    sp.add_argument("--keep", action="store_true", help="keep the state even when no interface is left")

    sp = cmd("status", cmd_status, "attached interfaces, policy and capacity")
    sp.add_argument("--json", action="store_true")

    for name in ("allow", "deny"):
        sp = cmd(name, cmd_add, f"{name}: an entry ('from PREFIX...', 'PORT[/tcp|udp]...') or a rule "
                 "('[proto P] [from A [port P]] [to B [port P]] [on IFACE]')")
        sp.add_argument("words", nargs="*", metavar="WORD")
        sp.add_argument("--ttl", help="expire after SECONDS (or 10m, 2h, 1d); entries only")
        sp.add_argument("--file", help="prefixes, one per line ('-': stdin); all or nothing")
        sp.add_argument("-q", "--quiet", action="store_true")

    sp = cmd("insert", cmd_insert, "insert a rule before rule number N: 'insert N allow|deny ...'")
    sp.add_argument("position", type=_positive)
    sp.add_argument("words", nargs="+", metavar="WORD")

    sp = cmd("delete", cmd_delete, "delete rules ('N...' or the rule's words) or entries "
             "('[allow|deny] from PREFIX...', '[allow|deny] PORT/PROTO')")
    sp.add_argument("words", nargs="+", metavar="WORD")

    sp = cmd("list", cmd_list, "entries and numbered rules, with hit counts")
    sp.add_argument("--json", action="store_true")

    sp = cmd("set", cmd_set, "named prefix sets for rules: 'add NAME [PREFIX...] [--file F]', "
             "'remove NAME PREFIX...', 'list [NAME]', 'destroy NAME'")
    sp.add_argument("op", metavar="add|remove|list|destroy")
    sp.add_argument("words", nargs="*", metavar="WORD")
    sp.add_argument("--file", help="prefixes, one per line ('-': stdin); all or nothing")
    sp.add_argument("--json", action="store_true")

    sp = cmd("apply", cmd_apply, "replace the whole rule set (rules, sets, policy) from a TOML file in one step")
    sp.add_argument("file", help="the rule-set file ('-': stdin)")

    sp = cmd("save", cmd_save, "write the running rule set as a file that 'apply' reads")
    sp.add_argument("file", nargs="?", help="where (default: stdout)")

    sp = cmd("policy", cmd_policy, "show or set the default policy for unmatched packets: pass or drop")
    sp.add_argument("policy", nargs="?")

    sp = cmd("stats", cmd_stats, "packets and bytes per verdict and reason")
    sp.add_argument("--json", action="store_true")

    sp = cmd("trace", cmd_trace, "one line per packet with its verdict (sampled)")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--count", type=int, help="exit after N events")
    sp.add_argument("--sample", type=_positive, default=1, help="trace one packet in N (default 1)")

    sp = cmd("replay", cmd_replay, "what the loaded filter does to each packet of a pcap file")
    sp.add_argument("file", help="a pcap file ('-': stdin)")
    sp.add_argument("--json", action="store_true")

    cmd("sweep", cmd_sweep, "remove expired entries (the datapath ignores them already)")

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
    sp.add_argument("--count", type=int, help="exit after N lines")
    return p


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        word = _command_word(argv)
        if word is not None and ("-h" in argv or "--help" in argv):
            word = None
        args = build_parser(word).parse_args(argv)
        return int(args.func(args))
    except _Usage as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - every error ends as one line
        from .errors import UsageError

        if isinstance(exc, UsageError):
            return _fail(str(exc), 2)
        if isinstance(exc, PermissionError) and not getattr(exc, "what", None):
            return _fail(str(exc) if "root" in str(exc) else f"permission denied: {exc}", 1)
        if os.environ.get("PYXDP_DEBUG"):
            raise
        return _fail(_describe(exc), 1)


def _describe(exc: BaseException) -> str:
    from .errors import PyxdpError, VerifierError

    if isinstance(exc, VerifierError):
        import tempfile

        path = os.path.join(tempfile.gettempdir(), "pyxdp-verifier.log")
        try:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(exc.log)
            return f"{exc} (verifier log: {path})"
        except OSError:
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
