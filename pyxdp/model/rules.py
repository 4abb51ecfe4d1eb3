"""Rules as users type them, in ufw's grammar and with ufw's meaning: one
normaliser turns the words of any form ufw accepts into a :class:`Rule`,
whose ``str()`` is the canonical text that parses back to the same rule.
Pure Python: no root, no libbpf.

    allow|deny PORT[/tcp|udp]                 ufw's short form; 22 alone is tcp and udp
    allow|deny [in] [on IFACE] [proto P] [from A [port P]] [to B [port P]] [proto P]

A port is ``22``, a range ``1000:2000``, or a list ``80,443,8000:8080``; an
address is a prefix (a bare address is a host), ``@SET`` or ``any``. Rules are
tried in order; the first that matches decides."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple, Optional

from ..errors import UsageError
from ..layout import RULE_TEXT, Action
from ..names import is_ifname
from .prefix import Prefix, is_digits, parse_prefix, quote

RULE_PROTOS = {"any": 0, "tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
DEFAULT_RULES = 1024
MAX_RULES = 8192
SET_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,31}\Z")
IFNAME_RE = re.compile(r"[A-Za-z0-9_.:@+-]+\Z")  # what rule texts and files can carry unquoted
MAX_PORT_RANGES = 15  # ufw's limit for a port list

PortRanges = Optional[tuple[tuple[int, int], ...]]


def check_capacity(n: int) -> int:
    if n % 64 or not 64 <= n <= MAX_RULES:
        raise UsageError(f"rule capacity {n}: a multiple of 64 from 64 to {MAX_RULES}")
    return n


class Addr(NamedTuple):
    """One side of a rule: ``any``, a prefix, or a named set."""

    prefix: Prefix | None = None
    set: str | None = None

    def __str__(self) -> str:
        if self.prefix is not None:
            return str(self.prefix)
        return f"@{self.set}" if self.set else "any"

    @property
    def family(self) -> int:
        return self.prefix.family if self.prefix is not None else 0


ANY = Addr()


def format_ports(r: PortRanges) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in r or ())


class Rule(NamedTuple):
    """One ordered rule. ``str(rule)`` is its canonical text."""

    action: Action
    proto: str = "any"
    src: Addr = ANY
    sport: PortRanges = None
    dst: Addr = ANY
    dport: PortRanges = None
    iface: str | None = None

    def __str__(self) -> str:
        words = self.action.name.lower()
        if self.proto != "any":
            words += f" proto {self.proto}"
        if self.src != ANY or self.sport:
            words += f" from {self.src}" + (f" port {format_ports(self.sport)}" if self.sport else "")
        if self.dst != ANY or self.dport:
            words += f" to {self.dst}" + (f" port {format_ports(self.dport)}" if self.dport else "")
        if self.iface:
            words += f" on {self.iface}"
        return words

    def sets(self) -> list[str]:
        return [a.set for a in (self.src, self.dst) if a.set]


# ---- grammar -------------------------------------------------------------------


def parse_ports(text: str) -> tuple[tuple[int, int], ...]:
    """``22``, ``1000:2000`` or a list ``80,443,8000:8080`` (ufw's syntax);
    overlapping ranges are merged."""
    parts = text.split(",")
    if len(parts) > MAX_PORT_RANGES:
        raise UsageError(f"bad port list {quote(text)}: at most {MAX_PORT_RANGES} ports or ranges")
    ranges = []
    for part in parts:
        lo_s, colon, hi_s = part.partition(":")
        lo = int(lo_s) if is_digits(lo_s) and len(lo_s) <= 5 else -1
        hi = (int(hi_s) if is_digits(hi_s) and len(hi_s) <= 5 else -1) if colon else lo
        if not (0 <= lo <= 65535 and 0 <= hi <= 65535):
            raise UsageError(f"bad port {quote(part)}: a port 0 to 65535, a range LOW:HIGH, or a list of those")
        if lo > hi:
            raise UsageError(f"bad port range {quote(part)}: the low port comes first")
        ranges.append((lo, hi))
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def parse_set_name(text: str) -> str:
    name = text[1:] if text.startswith("@") else text
    if not SET_NAME_RE.match(name):
        raise UsageError(f"bad set name {quote(text)}: 1 to 31 letters, digits, '_' or '-'")
    return name


def _parse_addr(word: str) -> Addr:
    if word == "any":
        return ANY
    if word.startswith("@"):
        return Addr(set=parse_set_name(word))
    return Addr(prefix=parse_prefix(word))


def parse_action(word: str) -> Action:
    if word in ("allow", "deny"):
        return Action.ALLOW if word == "allow" else Action.DENY
    if word in ("reject", "limit"):
        raise UsageError(f"{word!r} is not supported: XDP can allow or deny (drop)")
    raise UsageError(f"a rule starts with allow or deny, not {quote(word)}")


def _short_form(action: Action, word: str) -> Rule | None:
    """ufw's ``allow 22``, ``allow 22/tcp``, ``allow 1000:2000/udp``."""
    ports, slash, proto = word.partition("/")
    if not ports[:1].isdigit():  # ASCII or not: parse_ports refuses what is not 0-9
        return None
    if slash and proto not in ("tcp", "udp"):
        raise UsageError(f"bad protocol in {quote(word)}: PORT/tcp or PORT/udp")
    ranges = parse_ports(ports)
    if not slash and (len(ranges) > 1 or ranges[0][0] != ranges[0][1]):
        raise UsageError(f"{quote(word)}: a port list or range needs a protocol (e.g. {ports}/tcp), as in ufw")
    return Rule(action, proto=proto or "any", dport=ranges)


def parse_rule_words(words: Sequence[str]) -> Rule:
    """The words of a rule, in any form ufw accepts, as a Rule."""
    if not words:
        raise UsageError("a rule starts with allow or deny")
    action = parse_action(words[0])
    rest = list(words[1:])
    if len(rest) == 2 and rest[0] == "in":  # ufw: 'allow in 22/tcp'
        rest = rest[1:]
    if len(rest) == 1:
        short = _short_form(action, rest[0])
        if short is not None:
            return short
    fields: dict[str, object] = {"action": action}
    seen: set[str] = set()
    pos = 0

    def take(what: str) -> str:
        nonlocal pos
        if pos >= len(rest):
            raise UsageError(f"expected {what} at the end")
        pos += 1
        return rest[pos - 1]

    while pos < len(rest):
        word = take("a word")
        if word in seen:
            raise UsageError(f"{word!r} given twice in one rule")
        if word == "in":
            seen.add(word)
            continue
        if word == "out":
            raise UsageError("pyxdp filters incoming packets only ('out' rules are not supported)")
        if word == "proto":
            proto = take("a protocol after 'proto'")
            if proto not in RULE_PROTOS:
                raise UsageError(f"bad protocol {quote(proto)}: tcp, udp, icmp, icmpv6 or any")
            fields["proto"] = proto
        elif word in ("from", "to"):
            fields["src" if word == "from" else "dst"] = _parse_addr(take(f"an address, @SET or 'any' after {word!r}"))
            if pos < len(rest) and rest[pos] == "port":
                pos += 1
                fields["sport" if word == "from" else "dport"] = parse_ports(take("a port after 'port'"))
        elif word == "on":
            ifname = take("an interface after 'on'")
            if not is_ifname(ifname) or not IFNAME_RE.match(ifname):
                raise UsageError(f"bad interface name {quote(ifname)}")
            fields["iface"] = ifname
        elif word == "port":
            raise UsageError("'port' goes after 'from ADDRESS' or 'to ADDRESS' (e.g. 'to any port 22')")
        elif _looks_like_port(word):
            raise UsageError(f"{quote(word)}: the short form 'allow|deny PORT[/PROTO]' stands alone; "
                             "otherwise write 'to any port N'")
        else:
            raise UsageError(f"unexpected {quote(word)}: expected proto, from, to or on")
        seen.add(word)
    rule = Rule(**fields)  # type: ignore[arg-type]
    if (rule.sport or rule.dport) and rule.proto not in ("any", "tcp", "udp"):
        raise UsageError(f"ports need proto tcp, udp or any, not {rule.proto}")
    fams = {a.family for a in (rule.src, rule.dst)} - {0}
    if len(fams) > 1:
        raise UsageError("source and destination prefixes are of different families: the rule could never match")
    if (rule.proto == "icmp" and 6 in fams) or (rule.proto == "icmpv6" and 4 in fams):
        raise UsageError(f"proto {rule.proto} does not go with IPv{fams.pop()} prefixes")
    if len(str(rule).encode()) >= RULE_TEXT:
        raise UsageError(f"rule too long (at most {RULE_TEXT - 1} bytes as text): {rule}")
    return rule


def _looks_like_port(word: str) -> bool:
    num = word.partition("/")[0]
    return bool(num) and all(is_digits(p.partition(":")[0]) for p in num.split(","))


def parse_rule(text: str) -> Rule:
    return parse_rule_words(text.split())
