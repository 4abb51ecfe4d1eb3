"""The command table: each pyxdp-load command once, with its handler (a
function in one of the modules beside this one, imported only when the
command runs), whether it changes the firewall (its audit records are then
written), its help and its arguments. argparse builds a parser from this
table (:mod:`pyxdp.cli.parser`, only the named command's); the plain forms
of ``ban`` and ``unban`` are read without it (:mod:`pyxdp.cli.quick`).
Importing this module imports nothing else: no argparse, no typing."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class Args:
    """A parsed command line: the attributes argparse sets (it fills one of
    these: ``parse_args(namespace=Args())``), or the ban path's parser."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...


class Command:
    """One command: ``handler`` is 'module:function' in pyxdp.cli;
    ``changes`` says whether a call changes the firewall (True, False, or a
    test of its arguments); ``arguments`` adds them to an argparse parser."""

    __slots__ = ("arguments", "changes", "dry_run", "handler", "help", "name")

    def __init__(self, name: str, handler: str, help: str, arguments: Callable[[Any], None],
                 changes: bool | Callable[[Args], bool], dry_run: bool = False) -> None:
        self.name = name
        self.handler = handler
        self.help = help
        self.arguments = arguments
        self.changes = changes
        self.dry_run = dry_run  # the handler honours --dry-run

    def changes_with(self, args: Args) -> bool:
        """Whether this call changes the firewall (and so writes audit records)."""
        return self.changes if isinstance(self.changes, bool) else self.changes(args)


# ---- argument values (argparse calls these; its error type is imported only then) ----


def _ascii_digits(text: str) -> bool:
    """Digits 0-9 only: int() and str.isdigit() also take '٣' or '²'."""
    return text.isascii() and text.isdigit()


def positive(text: str) -> int:
    if not _ascii_digits(text) or int(text) < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)


def integer(text: str) -> int:
    """A whole number in ASCII digits, with an optional '-' (checked by the command)."""
    if not _ascii_digits(text[1:] if text.startswith("-") else text):
        import argparse

        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(text)


def number(text: str) -> float:
    """A decimal number in ASCII ('1', '0.5', '2e-1'; its range is the
    command's to check): float() also takes '٣'."""
    import argparse

    if not text.isascii():
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


# ---- each command's arguments ----------------------------------------------------


def _netns(sp: Any) -> None:
    sp.add_argument("--netns", metavar="NAME", help="the interface is in network namespace NAME (ip netns)")


def _mode(sp: Any) -> None:
    sp.add_argument("--mode", default="auto", help="auto (native, else generic), native or generic")
    sp.add_argument("--force", action="store_true", help="replace an XDP program that is not ours")


def _json(sp: Any) -> None:
    sp.add_argument("--json", action="store_true")


def _attach(sp: Any) -> None:
    sp.add_argument("iface")
    _mode(sp)
    _netns(sp)
    sp.add_argument("--capacity", type=positive, help="set elements per family when state is created "
                    "(default 1048576; memory is used only for elements present)")
    sp.add_argument("--reload", action="store_true", help="load the program afresh (after an upgrade)")
    sp.add_argument("--rules", type=positive, help="rule capacity when state is created: a multiple of 64, "
                    "at most 8192 (default 1024)")
    sp.add_argument("--flows", type=positive, help="tracked connections per family when state is created "
                    "(default 65536; the least recently used goes when full)")


def _detach(sp: Any) -> None:
    sp.add_argument("iface")
    _netns(sp)
    sp.add_argument("--keep", action="store_true", help="keep the state even when no interface is left")


def _app_dir(sp: Any) -> None:
    sp.add_argument("--app-dir", metavar="DIR", help="ufw's application profiles (default /etc/ufw/applications.d)")


def _rule(sp: Any) -> None:
    sp.add_argument("words", nargs="+", metavar="WORD")
    sp.add_argument("-q", "--quiet", action="store_true")
    _app_dir(sp)


def _insert(sp: Any) -> None:
    sp.add_argument("position", type=positive)
    sp.add_argument("words", nargs="+", metavar="WORD")
    _app_dir(sp)


def _prepend(sp: Any) -> None:
    sp.add_argument("words", nargs="+", metavar="WORD")
    _app_dir(sp)


def _delete(sp: Any) -> None:
    sp.add_argument("words", nargs="+", metavar="WORD")
    _app_dir(sp)


def _status(sp: Any) -> None:
    sp.add_argument("form", nargs="?", metavar="numbered|verbose", help="ufw's forms: the rules numbered, or with "
                    "the defaults")
    _json(sp)


def _list(sp: Any) -> None:
    sp.add_argument("form", nargs="?", metavar="numbered|verbose", help="as 'status numbered|verbose'")
    _json(sp)


def _app(sp: Any) -> None:
    sp.add_argument("op", metavar="list|info")
    sp.add_argument("name", nargs="?", metavar="NAME")
    _app_dir(sp)


def _reset(sp: Any) -> None:
    sp.add_argument("--force", action="store_true", help="no question (needed when stdin is not a terminal)")


def _set(sp: Any) -> None:
    sp.add_argument("op", metavar="add|remove|list|flush|destroy")
    sp.add_argument("words", nargs="*", metavar="WORD")
    sp.add_argument("--file", help="prefixes, one per line ('-': stdin); all or nothing")
    sp.add_argument("--ttl", help="elements added expire after SECONDS (or 10m, 2h, 1d); 0: never")
    sp.add_argument("--json", action="store_true")


def _targets(sp: Any) -> None:
    sp.add_argument("targets", nargs="*", metavar="ADDR|PREFIX")
    sp.add_argument("--file", help="prefixes, one per line ('-': stdin); all or nothing")
    sp.add_argument("--set", default="banned", help="the set (default: banned)")
    sp.add_argument("-q", "--quiet", action="store_true")


def _ban(sp: Any) -> None:
    _targets(sp)
    sp.add_argument("--ttl", help="lift the ban after SECONDS (or 10m, 2h, 1d); none or 0: permanent")


def _unban(sp: Any) -> None:
    _targets(sp)
    sp.add_argument("--all", action="store_true", help="empty the set")


def _apply(sp: Any) -> None:
    sp.add_argument("file", help="the rule-set file ('-': stdin)")


def _save(sp: Any) -> None:
    sp.add_argument("file", nargs="?", help="where (default: stdout)")
    sp.add_argument("--all", action="store_true", help="also the interfaces it is attached to (those that "
                    "still exist): the config file that 'up' reads")


def _up(sp: Any) -> None:
    sp.add_argument("file", nargs="?", help="the config file ('-': stdin; default $PYXDP_CONFIG, else "
                    "/etc/pyxdp/pyxdp.toml)")
    sp.add_argument("--only", metavar="IFACE", help="attach just this interface of the config (rules and sets "
                    "are applied only to state made now; nothing is detached): for an interface that appears late")
    sp.add_argument("--no-runtime", action="store_true", help="the config file alone: leave out what changed at "
                    "run time (bans, set elements; saved in $PYXDP_RUNTIME_DIR, else /var/lib/pyxdp)")
    sp.add_argument("--capacity", type=positive, help="set elements per family when state is created "
                    "(default 1048576)")
    sp.add_argument("--rules", type=positive, help="rule capacity when state is created: a multiple of 64, "
                    "at most 8192 (default 1024)")
    sp.add_argument("--allow-empty", action="store_true", help="let a config that names no interface detach "
                    "every attached one (refused otherwise: an empty file would leave the host unfiltered)")


def _save_runtime(sp: Any) -> None:
    sp.add_argument("--config", metavar="FILE", help="the config file the runtime adds to (default $PYXDP_CONFIG, "
                    "else /etc/pyxdp/pyxdp.toml; it is read, never written)")


def _no_arguments(sp: Any) -> None:
    """A command with no arguments of its own (the global --pin-dir only)."""
def _import(sp: Any) -> None:
    sp.add_argument("source", metavar="ufw", help="what to import: ufw (its user.rules, user6.rules and "
                    "/etc/default/ufw)")
    sp.add_argument("--ufw-dir", default="/", metavar="ROOT",
                    help="read ufw's files under ROOT (ROOT/etc/ufw/user.rules, ...; default /)")
    sp.add_argument("--apply", action="store_true", help="make the running rules and policy these (sets stay); "
                    "without it, print them as a rule-set file")


def _policy(sp: Any) -> None:
    sp.add_argument("policy", nargs="?")


def _state(sp: Any) -> None:
    sp.add_argument("onoff", nargs="?", metavar="on|off")
    sp.add_argument("--timeout", action="append", metavar="NAME=SECONDS",
                    help="tcp_syn_sent, tcp_established, tcp_fin, tcp_close, udp, udp_stream, icmp (repeatable)")
    sp.add_argument("--json", action="store_true")


def _trace(sp: Any) -> None:
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--count", type=integer, help="exit after N events")
    sp.add_argument("--sample", type=positive, default=1, help="trace one packet in N (default 1)")
    sp.add_argument("--verdict", choices=("pass", "drop"), help="only packets given this verdict")
    sp.add_argument("--from", dest="src", metavar="PREFIX",
                    help="only packets whose source address lies in PREFIX (IPv4 or IPv6; an address: that host)")
    sp.add_argument("--port", metavar="PORTS",
                    help="only TCP/UDP packets with this source or destination port (N, LOW:HIGH or a list)")
    sp.add_argument("--rule", type=positive, metavar="N", help="only packets that rule number N decided")
    sp.add_argument("--pcap", metavar="FILE",
                    help="also write each traced packet's first 128 bytes to a pcap file ('-': stdout, instead "
                    "of the lines)")


def _replay(sp: Any) -> None:
    sp.add_argument("file", help="a pcap file ('-': stdin)")
    sp.add_argument("--json", action="store_true")


def _load(sp: Any) -> None:
    sp.add_argument("object")
    sp.add_argument("iface")
    sp.add_argument("--program", help="program name in the object (default: the first)")
    _mode(sp)
    _netns(sp)


def _unload(sp: Any) -> None:
    sp.add_argument("iface")
    _netns(sp)


def _printk(sp: Any) -> None:
    sp.add_argument("--count", type=integer, help="exit after N lines")


def _exporter(sp: Any) -> None:
    sp.add_argument("--listen", default="127.0.0.1:9436", metavar="ADDR:PORT",
                    help="address and port to serve on ([V6]:PORT for IPv6; default 127.0.0.1:9436)")
    _rule_metrics(sp)


def _rule_metrics(sp: Any) -> None:
    sp.add_argument("--rule-metrics", default="top:1024", metavar="all|top:N|off",
                    help="per-rule series: for every rule, for the N with the most packets, or none "
                    "(default top:1024)")


def _top(sp: Any) -> None:
    sp.add_argument("--interval", type=number, default=1.0, metavar="SECONDS",
                    help="refresh every SECONDS (default 1)")
    sp.add_argument("--sample", type=integer, default=100, metavar="N",
                    help="trace one packet in N for the dropped sources (default 100; 0: no tracing)")
    sp.add_argument("--window", type=number, default=30.0, metavar="SECONDS",
                    help="the dropped sources' rates are taken over the last SECONDS (default 30)")
    sp.add_argument("--once", action="store_true", help="print one snapshot (two readings an interval apart) "
                    "as plain text and exit")


def _agent(sp: Any) -> None:
    sp.add_argument("--config", metavar="FILE", help="the config file to follow (default $PYXDP_CONFIG, else "
                    "/etc/pyxdp/pyxdp.toml)")
    sp.add_argument("--watch", action="store_true", help="bring the file in at start and on every change (without "
                    "it the file is only read: 'pyxdp-load up' applies it)")
    sp.add_argument("--listen", default="127.0.0.1:9436", metavar="ADDR:PORT",
                    help="serve /metrics, /healthz and /readyz on ADDR:PORT (default 127.0.0.1:9436; 'off': none)")
    sp.add_argument("--interval", type=number, default=1.0, metavar="SECONDS",
                    help="look at the file and the interfaces every SECONDS (default 1)")
    sp.add_argument("--retry", type=number, default=5.0, metavar="SECONDS",
                    help="try a change that failed (e.g. a missing interface) again every SECONDS (default 5)")
    _rule_metrics(sp)
    sp.add_argument("--interfaces", metavar="SELECT", help="with --watch: run on this node's interfaces that "
                    "SELECT names instead of the file's [[interface]] tables: names or shell patterns (eth*), "
                    "comma-separated, or default-route (the interfaces of the default routes)")
    sp.add_argument("--node", metavar="NAME", help="this node's name in the metrics (default $NODE_NAME, else the "
                    "host name)")
    sp.add_argument("--detach-on-exit", action="store_true", help="detach the filter when stopped (by default it "
                    "stays attached and enforcing)")


def _resize(sp: Any) -> None:
    sp.add_argument("--rules", type=positive, help="rule capacity: a multiple of 64, at most 8192")
    sp.add_argument("--capacity", type=positive, help="set elements per family: a multiple of 64")
    sp.add_argument("--flows", type=positive, help="tracked connections per family: a multiple of 64")


def _rule_help(name: str) -> str:
    return (f"append a rule (or update the rule with the same match), in ufw's grammar: '{name} 22/tcp', "
            f"'{name} OpenSSH', '{name} from PREFIX', '{name} [proto P] [from A [port P] [app APP]] "
            f"[to B [port P] [app APP]] [on IFACE] [comment TEXT]'")


# ---- the table (in the order 'pyxdp-load --help' lists the commands) -------------


TABLE: dict[str, Command] = {c.name: c for c in (
    Command("attach", "attach:cmd_attach", "load the filter (once) and attach it to an interface", _attach, True),
    Command("detach", "attach:cmd_detach", "detach the filter from an interface (the last one removes the state)",
            _detach, True),
    Command("status", "attach:cmd_status", "attached interfaces, policy, rules and sets (exit 1: no state); "
            "'status numbered|verbose': ufw's forms", _status, False),
    Command("remove", "remove:cmd_remove", "detach the filter from every interface it runs on and remove its state",
            _no_arguments, True),
    Command("resize", "resize:cmd_resize", "change the rule, set element or flow capacity in place while the "
            "filter runs (everything in it stays)", _resize, True),
    Command("allow", "rules:cmd_add", _rule_help("allow"), _rule, True, dry_run=True),
    Command("deny", "rules:cmd_add", _rule_help("deny"), _rule, True, dry_run=True),
    Command("insert", "rules:cmd_insert", "insert a rule before rule number N: 'insert N allow|deny ...'", _insert,
            True, dry_run=True),
    Command("prepend", "rules:cmd_prepend", "insert a rule as rule 1: 'prepend deny from PREFIX'", _prepend, True,
            dry_run=True),
    Command("delete", "rules:cmd_delete",
            "delete rules: by number ('delete 2 5') or by their words ('delete allow 22/tcp')", _delete, True,
            dry_run=True),
    Command("list", "rules:cmd_list", "the policy, the numbered rules with hit counts, and the sets", _list, False),
    Command("app", "apps:cmd_app", "ufw's application profiles: 'app list', 'app info NAME'", _app, False),
    Command("reset", "rules:cmd_reset", "remove every rule and set, policy pass, connection state on with the "
            "default timeouts (asks first unless --force)", _reset, True, dry_run=True),
    Command("set", "sets:cmd_set", "named sets of prefixes for rules: 'add NAME PREFIX... [--ttl T] [--file F]', "
            "'remove NAME PREFIX...', 'list [NAME]', 'flush NAME', 'destroy NAME'", _set,
            lambda args: getattr(args, "op", None) != "list", dry_run=True),
    Command("ban", "sets:cmd_ban", "add to a set that a 'deny from @SET' rule drops (inserted as rule 1 when no rule "
            "uses the set yet)", _ban, True, dry_run=True),
    Command("unban", "sets:cmd_unban", "remove from that set (an address not banned is not an error)", _unban,
            True, dry_run=True),
    Command("apply", "files:cmd_apply", "make the firewall (policy, rules, sets with their elements) what a TOML "
            "file says, in one step", _apply, True, dry_run=True),
    Command("save", "files:cmd_save", "write the running firewall as a file that 'apply' reads", _save, False),
    Command("up", "files:cmd_up", "make the firewall and the interfaces it runs on what the config file says: "
            "apply rules and sets, attach, detach what the file no longer names (a second run changes nothing)",
            _up, True, dry_run=True),
    Command("save-runtime", "runtime:cmd_save_runtime", "save what changed at run time (bans, set elements with "
            "their time left; rules with [runtime] keep_rules) to /var/lib/pyxdp for the next boot's 'up'; the "
            "config file is never written", _save_runtime, False),
    Command("import", "ufwimport:cmd_import", "an existing ufw's rules and policy as pyxdp's: print them as a "
            "rule-set file, or '--apply' them; one note per rule not carried over exactly", _import,
            lambda args: bool(getattr(args, "apply", False))),
    Command("policy", "rules:cmd_policy", "show or set the default policy for unmatched packets: pass or drop",
            _policy, lambda args: getattr(args, "policy", None) is not None, dry_run=True),
    Command("state", "rules:cmd_state", "connection state: show it, or turn it on/off ('state off'), or set "
            "timeouts ('state --timeout udp=60')", _state,
            lambda args: getattr(args, "onoff", None) is not None or bool(getattr(args, "timeout", None)),
            dry_run=True),
    Command("flows", "observe:cmd_flows", "the connections the host opened that are tracked now (their replies "
            "pass)", _json, False),
    Command("stats", "observe:cmd_stats", "packets and bytes per verdict and reason", _json, False),
    Command("trace", "observe:cmd_trace", "one line per packet with its verdict (sampled)", _trace, True),
    Command("replay", "observe:cmd_replay", "what the loaded filter does to each packet of a pcap file", _replay,
            False),
    Command("load", "attach:cmd_load", "attach any precompiled XDP object (e.g. examples/packets.bpf.o)", _load,
            False),
    Command("unload", "attach:cmd_unload", "detach the XDP program that 'load' attached", _unload, False),
    Command("printk", "attach:cmd_printk", "stream bpf_printk output (trace_pipe; mounts tracefs when missing)",
            _printk, False),
    Command("exporter", "observe:cmd_exporter", "serve Prometheus metrics of the state over HTTP until SIGTERM or "
            "Ctrl-C", _exporter, False),
    Command("agent", "agent:cmd_agent", "follow the config file until SIGTERM: bring each change in (--watch), "
            "attach interfaces that come back, serve metrics, /healthz and /readyz", _agent,
            lambda args: bool(getattr(args, "watch", False) or getattr(args, "detach_on_exit", False))),
    Command("top", "observe:cmd_top", "live view: packets and bits per second by interface, verdict and reason; "
            "every rule; top dropped sources (q or Ctrl-C quits)", _top, lambda args: bool(getattr(args, "sample", 0))),
)}
