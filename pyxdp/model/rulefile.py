"""The rule-set file: the whole firewall as TOML (what ``save`` writes and
``apply`` reads): the policy, the rules in order, and every set with its
elements and their remaining timeouts. Pure Python: no root, no libbpf.

    policy = "drop"
    established = "on"         # replies to connections the host opened pass before the rules
    rules = [
        "deny from @banned",
        "allow proto tcp to any port 22 comment 'ssh'",
        "allow proto tcp to any port 80,443 app 'Apache Full'",   # the profile's name and its ports
    ]

    [sets]
    banned = [
        "203.0.113.7/32",
        "198.51.100.0/24 ttl 583",     # removed by itself 583 s after the apply
    ]

    [timeouts]                 # optional: seconds a tracked connection lives (see pyxdp.flows)
    udp = 60

The config file ``pyxdp-load up`` reads (``save --all`` writes) is this file
plus the interfaces the filter runs on, one ``[[interface]]`` table each
(``apply`` leaves interfaces alone):

    [[interface]]
    name = "eth0"
    mode = "native"            # auto (default), native, generic or offload
    netns = "blue"             # optional: an 'ip netns' namespace
    wait = 10                  # optional: seconds 'up' waits for it to appear (default 0)
    optional = true            # optional: missing (after its wait), 'up' skips it with a warning

and, optionally, what pyxdp keeps of the changes made at run time (see
:mod:`pyxdp.model.runtime`):

    [runtime]
    keep_rules = true          # rules added by hand are kept across reboots too (bans always are)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..errors import UsageError
from ..layout import Verdict
from ..names import IFNAME_MAX, is_ifname
from .modes import XdpMode
from .prefix import Prefix, parse_prefix, parse_ttl, quote
from .rules import IFNAME_RE, SET_NAME_RE, Rule, parse_rule


class Element(NamedTuple):
    """A set element: a prefix and its time to live in seconds (None: permanent)."""

    prefix: Prefix
    ttl: int | None = None

    def __str__(self) -> str:
        return f"{self.prefix}" + (f" ttl {self.ttl}" if self.ttl else "")


class InterfaceSpec(NamedTuple):
    """An interface the filter runs on, as the config file names it."""

    name: str
    netns: str | None = None  # an 'ip netns' name; None: the host's namespace
    mode: str = "auto"  # auto, native, generic or offload (XdpMode's values)
    optional: bool = False  # missing: 'up' skips it (with a warning) instead of failing
    wait: float = 0.0  # seconds 'up' waits for it to appear

    def __str__(self) -> str:
        return self.name + (f" (netns {self.netns})" if self.netns else "")


class RuleSetSpec(NamedTuple):
    """The whole firewall: what ``apply`` installs and ``save`` writes.
    ``interfaces``: what ``up`` attaches it to (``save --all`` writes them;
    ``apply`` ignores them)."""

    rules: tuple[Rule, ...] = ()
    sets: dict[str, list[Element]] = {}  # noqa: RUF012 - a NamedTuple default, never mutated
    policy: Verdict | None = None
    interfaces: tuple[InterfaceSpec, ...] = ()
    established: bool | None = None  # connection state on/off; None: the file does not say
    timeouts: dict[str, int] = {}  # noqa: RUF012 - connection timeouts the file names (pyxdp.model.timeouts.TIMEOUTS)
    keep_rules: bool = False  # [runtime] keep_rules: rules added at run time are kept across reboots


def parse_element(text: str) -> Element:
    """``PREFIX`` or ``PREFIX ttl T``."""
    words = text.split()
    if len(words) == 1:
        return Element(parse_prefix(words[0]))
    if len(words) == 3 and words[1] == "ttl":
        ttl = parse_ttl(words[2])
        return Element(parse_prefix(words[0]), ttl or None)
    raise UsageError(f"bad set element {quote(text)}: 'PREFIX' or 'PREFIX ttl SECONDS'")


def _toml_loads(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def _line_of(lines: list[str], needle: str) -> int:
    """1-based number of the first line quoting ``needle``."""
    for i, line in enumerate(lines):
        if f'"{needle}"' in line or f"'{needle}'" in line:
            return i + 1
    return 0


NESTING = 64  # arrays and inline tables deeper than this are named in the error when the TOML parser gives up


def _nesting_line(text: str, most: int = NESTING) -> int:
    """1-based number of the line where arrays and inline tables first nest
    deeper than ``most`` (strings and comments skipped); 0: nowhere."""
    depth, line, i, n = 0, 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            i = text.find("\n", i)
            if i < 0:
                break
            continue
        if c in "\"'":
            end = c * 3 if text.startswith(c * 3, i) else c
            j = i + len(end)
            while j < n and not text.startswith(end, j) and (len(end) == 3 or text[j] != "\n"):
                j += 2 if c == '"' and text[j] == "\\" else 1
            line += text.count("\n", i, j)
            i = j + len(end)
            continue
        if c == "\n":
            line += 1
        elif c in "[{":
            depth += 1
            if depth > most:
                return line
        elif c in "]}":
            depth -= 1
        i += 1
    return 0


def parse_ruleset(text: str, source: str = "input") -> RuleSetSpec:
    """The firewall a rule-set file describes. Errors name the line."""
    lines = text.splitlines()
    try:
        doc = _toml_loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError says "(at line N, column M)"
        raise UsageError(f"{source}: {str(exc)[:200]}") from None
    except RecursionError:  # the parser recurses once per level of nesting
        line = _nesting_line(text)
        raise UsageError(f"{source}" + (f" line {line}" if line else "") + ": arrays or inline tables nested "
                         f"too deep (more than {NESTING} levels)") from None

    def fail(msg: str, needle: str | None = None, key: str | None = None) -> UsageError:
        line = _line_of(lines, needle) if needle is not None else 0
        if not line and key is not None:
            line = next((i + 1 for i, ln in enumerate(lines) if ln.lstrip(" \t[").startswith(key)), 0)  # or [key]
        return UsageError(f"{source}" + (f" line {line}" if line else "") + f": {msg}")

    unknown = sorted(set(doc) - {"policy", "established", "timeouts", "rules", "sets", "runtime", "interface"})
    if unknown:
        raise fail(f"unknown key {quote(unknown[0])} (expected policy, established, timeouts, rules, sets, "
                   "runtime, interface)", key=unknown[0])
    runtime = doc.get("runtime", {})
    if not isinstance(runtime, dict) or any(k != "keep_rules" for k in runtime):
        bad = next((k for k in runtime if k != "keep_rules"), None) if isinstance(runtime, dict) else None
        raise fail("runtime must be a table with keep_rules = true or false"
                   + (f" (unknown key {quote(bad)})" if bad else ""), key=bad or "runtime")
    keep_rules = runtime.get("keep_rules", False)
    if not isinstance(keep_rules, bool):
        raise fail("keep_rules must be true or false", key="keep_rules")
    established = doc.get("established")
    if established is not None and established not in ("on", "off"):
        raise fail(f"established must be \"on\" or \"off\", not {quote(str(established))}", key="established")
    raw_timeouts = doc.get("timeouts", {})
    if not isinstance(raw_timeouts, dict):
        raise fail("timeouts must be a table of NAME = SECONDS", key="timeouts")
    from .timeouts import default_timeouts, with_timeouts

    try:
        with_timeouts(default_timeouts(), raw_timeouts)
    except UsageError as exc:
        raise fail(str(exc), key=next(iter(raw_timeouts), None)) from None
    policy = doc.get("policy")
    if policy is not None and policy not in ("pass", "drop"):
        raise fail(f"policy must be \"pass\" or \"drop\", not {quote(str(policy))}", key="policy")
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list) or not all(isinstance(r, str) for r in raw_rules):
        raise fail("rules must be a list of strings, one rule each", key="rules")
    rules = []
    for text_rule in raw_rules:
        try:
            rules.append(parse_rule(text_rule))
        except UsageError as exc:
            raise fail(f"{exc} (in rule {quote(text_rule)})", needle=text_rule) from None
    seen: set[Rule] = set()
    for r in rules:
        if r in seen:
            raise fail(f"rule given twice: {r}", needle=str(r))
        seen.add(r)
    raw_sets = doc.get("sets", {})
    if not isinstance(raw_sets, dict):
        raise fail("sets must be a table of NAME = [elements]", key="sets")
    sets: dict[str, list[Element]] = {}
    for name, members in raw_sets.items():
        if not SET_NAME_RE.match(name):  # a bare name here: no '@'
            raise fail(f"bad set name {quote(name)}: 1 to 31 letters, digits, '_' or '-'", key=name)
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise fail(f"set {name} must be a list of strings ('PREFIX' or 'PREFIX ttl SECONDS')", key=name)
        out: dict[Prefix, Element] = {}
        for m in members:
            try:
                el = parse_element(m)
            except UsageError as exc:
                raise fail(f"set {name}: {exc}", needle=m) from None
            out[el.prefix] = el
        sets[name] = list(out.values())
    used = {s for r in rules for s in r.sets()}
    missing = sorted(used - set(sets))
    if missing:
        raise fail(f"a rule uses @{missing[0]}, which the file does not define under [sets]", key="rules")
    interfaces = _parse_interfaces(doc.get("interface", []), lines, source)
    return RuleSetSpec(tuple(rules), sets, Verdict[policy.upper()] if policy else None, interfaces=interfaces,
                       established=None if established is None else established == "on", timeouts=raw_timeouts,
                       keep_rules=keep_rules)


_NETNS_MAX = 59  # the ifaces record holds 60 bytes
_IFACE_KEYS = ("name", "netns", "mode", "optional", "wait")
MAX_WAIT = 600  # seconds an [[interface]]'s wait may be (a boot waits at most this long for one)


def _interface_line(lines: list[str], index: int, key: str | None) -> int:
    """1-based line of ``key`` in the ``index``-th ``[[interface]]`` table
    (its header line without a key; 0 when not found)."""
    headers = [i for i, ln in enumerate(lines) if re.match(r"\s*\[\[\s*interface\s*\]\]", ln)]
    if index >= len(headers):  # an inline 'interface = [...]', or '[interface]'
        return next((i + 1 for i, ln in enumerate(lines) if re.match(r"\s*\[?\s*interface\b", ln)), 0)
    start = headers[index]
    if key is None:
        return start + 1
    end = headers[index + 1] if index + 1 < len(headers) else len(lines)
    for i in range(start + 1, end):
        if re.match(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=", lines[i]):
            return i + 1
    return start + 1


def _parse_interfaces(raw: object, lines: list[str], source: str) -> tuple[InterfaceSpec, ...]:
    def fail(msg: str, index: int, key: str | None = None) -> UsageError:
        line = _interface_line(lines, index, key)
        return UsageError(f"{source}" + (f" line {line}" if line else "") + f": {msg}")

    if not isinstance(raw, list):
        raise fail("interface must be [[interface]] tables (name = ..., netns = ..., mode = ...)", 0)
    modes = [m.value for m in XdpMode]
    out: list[InterfaceSpec] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise fail("interface must be [[interface]] tables (name = ..., netns = ..., mode = ...)", i)
        unknown = [k for k in entry if k not in _IFACE_KEYS]
        if unknown:
            raise fail(f"unknown key {quote(unknown[0])} in [[interface]] (expected name, netns, mode, optional, "
                       "wait; the file's "
                       "other keys go before the first [[interface]])", i, unknown[0])
        name = entry.get("name")
        if name is None:
            raise fail("[[interface]] without a name (name = \"eth0\")", i)
        if (not isinstance(name, str) or not is_ifname(name) or not IFNAME_RE.match(name)
                or name in (".", "..")):
            raise fail(f"bad interface name {quote(str(name))}: 1 to {IFNAME_MAX} letters, digits or _ . : @ + -",
                       i, "name")
        netns = entry.get("netns")
        if netns is not None and (not isinstance(netns, str) or not 0 < len(netns) <= _NETNS_MAX
                                  or not IFNAME_RE.match(netns) or netns in (".", "..")):
            raise fail(f"bad netns {quote(str(netns))}: the name of an 'ip netns' namespace, 1 to {_NETNS_MAX} "
                       "letters, digits or _ . : @ + -", i, "netns")
        mode = entry.get("mode", "auto")
        if mode not in modes:
            raise fail(f"bad mode {quote(str(mode))} for interface {name}: {', '.join(modes)}", i, "mode")
        optional = entry.get("optional", False)
        if not isinstance(optional, bool):
            raise fail(f"optional must be true or false, not {quote(str(optional))}", i, "optional")
        wait = entry.get("wait", 0)
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_WAIT:
            raise fail(f"wait must be a number of seconds from 0 to {MAX_WAIT}, not {quote(str(wait))}", i, "wait")
        spec = InterfaceSpec(name, netns, mode, optional, float(wait))
        if any((o.name, o.netns) == (name, netns) for o in out):
            raise fail(f"interface {spec} given twice", i, "name")
        out.append(spec)
    return tuple(out)


def format_ruleset(spec: RuleSetSpec) -> str:
    """The rule-set file for ``save`` (``apply`` reads it back unchanged)."""
    out = ["# pyxdp firewall: 'pyxdp-load apply FILE' installs it, 'pyxdp-load save' writes it", ""]
    if spec.interfaces:
        out[0] = ("# pyxdp firewall and its interfaces: 'pyxdp-load up FILE' installs it, "
                  "'pyxdp-load save --all' writes it")
    if spec.policy is not None:
        out.append(f'policy = "{spec.policy.label}"')
    if spec.established is not None:
        out.append(f'established = "{"on" if spec.established else "off"}"')
    out.append("rules = [")
    out += [f'    "{toml_escape(str(r))}",' for r in spec.rules]
    out += ["]", "", "[sets]"]
    for name, members in spec.sets.items():
        out.append(f"{name} = [")
        out += [f'    "{e}",' for e in sort_elements(members)]
        out.append("]")
    if spec.timeouts:
        out += ["", "[timeouts]"] + [f"{k} = {v}" for k, v in spec.timeouts.items()]
    if spec.keep_rules:
        out += ["", "[runtime]", "keep_rules = true"]
    for i in spec.interfaces:  # names and modes need no quoting: parse_ruleset allows none that would
        out += ["", "[[interface]]", f'name = "{i.name}"'] + ([f'netns = "{i.netns}"'] if i.netns else [])
        out.append(f'mode = "{i.mode}"')
        if i.optional:
            out.append("optional = true")
        if i.wait:
            out.append(f"wait = {i.wait:g}")
    return "\n".join(out) + "\n"


def diff_rulesets(before: RuleSetSpec, after: RuleSetSpec) -> list[str]:
    """What making ``before`` into ``after`` changes, one line each (what
    ``apply`` and ``reset`` do; ``--dry-run`` prints it). What ``after``
    leaves out (policy, connection state, timeouts as None or empty) stays."""
    out: list[str] = []
    if after.policy is not None and after.policy != before.policy:
        out.append(f"policy {before.policy.label if before.policy is not None else '?'} -> {after.policy.label}")
    if after.established is not None and after.established != before.established:
        out.append(f"connection state {'on' if after.established else 'off'}")
    from .timeouts import default_timeouts, timeouts_by_name

    was = {**timeouts_by_name(default_timeouts()), **before.timeouts}
    out += [f"timeout {name} = {secs} s" for name, secs in after.timeouts.items() if was.get(name) != secs]
    if list(before.rules) != list(after.rules):
        old, new = [str(r) for r in before.rules], [str(r) for r in after.rules]
        out += [f"rule {i}: {r} (removed)" for i, r in enumerate(old, 1) if r not in new]
        out += [f"rule {i}: {r} (new)" for i, r in enumerate(new, 1) if r not in old]
        if sorted(old) == sorted(new):
            out.append("rules reordered")
    for name in sorted(set(before.sets) | set(after.sets)):
        if name not in after.sets:
            out.append(f"set @{name} removed ({len(before.sets[name])} elements)")
        elif name not in before.sets:
            out.append(f"set @{name} made ({len(after.sets[name])} elements)")
        else:
            old_els, new_els = {e.prefix for e in before.sets[name]}, {e.prefix for e in after.sets[name]}
            if old_els != new_els:
                out.append(f"set @{name}: {len(new_els - old_els)} elements added, {len(old_els - new_els)} removed")
    return out


def toml_escape(text: str) -> str:
    """``text`` inside a TOML basic string (a comment may hold '"' or '\\')."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def sort_elements(elements: Sequence[Element]) -> list[Element]:
    return sorted(elements, key=lambda e: (e.prefix.family, e.prefix.addr, e.prefix.plen))
