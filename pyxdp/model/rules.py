"""Rules as users type them, in ufw's grammar and with ufw's meaning: one
normaliser turns the words of any form ufw accepts into a :class:`Rule`,
whose ``str()`` is the canonical text that parses back to the same rule.
Pure Python: no root, no libbpf.

    allow|deny PORT[/tcp|udp] [comment 'TEXT']    ufw's short form; 22 alone is tcp and udp
    allow|deny SERVICE[/tcp|udp]                   a name of /etc/services: 'allow ssh' is 22/tcp
    allow|deny APP [comment 'TEXT']                an application profile (pyxdp.model.apps)
    allow|deny [in] [on IFACE] [proto P] [from A [port P] [app APP]] [to B [port P] [app APP]] [proto P]
               [comment 'TEXT']

A port is ``22``, a range ``1000:2000``, or a list ``80,443,8000:8080``; an
address is a prefix (a bare address is a host), ``@SET`` or ``any``; a
protocol is tcp, udp, icmp, icmpv6, esp, ah, gre, ipv6, igmp, vrrp, any or
a number 1 to 254. Rules are tried in order; the first that matches decides.

A rule's identity is its match, as in ufw: two rules that differ only in
action or comment are the same rule (:func:`plan_add` updates it in place).
An application rule carries the profile's name and the ports it resolved
to (``to any port 22 app OpenSSH``): its text needs no profile to read."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple, Optional, Protocol

from ..errors import UsageError
from ..layout import RULE_TEXT, Action
from ..names import is_ifname
from .prefix import Prefix, is_digits, parse_prefix, quote

# protocols by name (ufw's, and icmp/icmpv6); any other is written as its number
RULE_PROTOS = {"any": 0, "tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "esp": 50, "ah": 51, "gre": 47,
               "ipv6": 41, "igmp": 2, "vrrp": 112}
PROTO_NAMES = {num: name for name, num in RULE_PROTOS.items()}
APP_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}\Z")  # ufw's profile names (at most 64 characters)
DEFAULT_RULES = 1024
MAX_RULES = 8192
SET_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,31}\Z")
IFNAME_RE = re.compile(r"[A-Za-z0-9_.:@+-]+\Z")  # what rule texts and files can carry unquoted
MAX_PORT_RANGES = 15  # ufw's limit for a port list

PortRanges = Optional[tuple[tuple[int, int], ...]]


class AppPorts(Protocol):
    """What a rule takes from an application profile (pyxdp.model.apps.AppProfile)."""

    @property
    def name(self) -> str: ...

    @property
    def ports(self) -> tuple[tuple[PortRanges, str], ...]: ...


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


def proto_number(proto: str) -> int:
    """The IP protocol number of a rule's protocol ("any": 0)."""
    return RULE_PROTOS[proto] if proto in RULE_PROTOS else int(proto)


def _quoted(text: str) -> str:
    return f"'{text}'" if " " in text or not text else text


class Rule(NamedTuple):
    """One ordered rule. ``str(rule)`` is its canonical text. ``comment``:
    ufw's ``comment 'TEXT'``; ``sapp``/``dapp``: the application profile a
    side's ports came from."""

    action: Action
    proto: str = "any"
    src: Addr = ANY
    sport: PortRanges = None
    dst: Addr = ANY
    dport: PortRanges = None
    iface: str | None = None
    comment: str | None = None
    sapp: str | None = None
    dapp: str | None = None

    def __str__(self) -> str:
        words = self.action.name.lower()
        if self.proto != "any":
            words += f" proto {self.proto}"
        if self.src != ANY or self.sport or self.sapp:
            words += f" from {self.src}" + (f" port {format_ports(self.sport)}" if self.sport else "")
            words += f" app {_quoted(self.sapp)}" if self.sapp else ""
        if self.dst != ANY or self.dport or self.dapp:
            words += f" to {self.dst}" + (f" port {format_ports(self.dport)}" if self.dport else "")
            words += f" app {_quoted(self.dapp)}" if self.dapp else ""
        if self.iface:
            words += f" on {self.iface}"
        if self.comment:
            words += f" comment '{self.comment}'"
        return words

    def sets(self) -> list[str]:
        return [a.set for a in (self.src, self.dst) if a.set]

    def match_key(self) -> Rule:
        """What identifies the rule, as ufw does: everything but its action and comment."""
        return self._replace(action=Action.ALLOW, comment=None)


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


_SERVICE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")


def service_port(name: str, proto: str | None = None) -> tuple[int, str] | None:
    """A service name of /etc/services (``ssh``, ``http``) as ufw reads it:
    (its port, "tcp", "udp" or "any" when it is both); None when unknown."""
    if not _SERVICE_RE.match(name) or len(name) > 64:
        return None
    import socket

    found: dict[str, int] = {}
    for p in ("tcp", "udp"):
        if proto in (None, "any", p):
            try:
                found[p] = socket.getservbyname(name, p)
            except OSError:
                pass
    if not found:
        return None
    if len(found) == 2 and found["tcp"] != found["udp"]:
        del found["udp"]  # a name with two different ports: ufw takes tcp's
    return next(iter(found.values())), "any" if len(found) == 2 else next(iter(found))


def parse_proto(word: str) -> str:
    """A protocol by name or number (a known number is named: 50 is esp)."""
    if word in RULE_PROTOS:
        return word
    if is_digits(word) and len(word) <= 3 and 1 <= int(word) <= 254:
        return PROTO_NAMES.get(int(word), str(int(word)))
    raise UsageError(f"Unsupported protocol {quote(word)}: " + ", ".join(RULE_PROTOS) + " or a number 1 to 254")


def parse_app_name(word: str) -> str:
    """An application profile's name, as ufw allows them."""
    if not APP_NAME_RE.match(word) or word == "all" or is_digits(word):
        raise UsageError(f"bad application name {quote(word)}: letters, digits, ' ', '_', '.', '+', '-' "
                         "(at most 64, not all digits)")
    return word


def parse_comment(text: str) -> str | None:
    if "'" in text or not text.isprintable():
        raise UsageError(f"bad comment {quote(text)}: printable characters without \"'\"")
    return text or None


def tokenize(text: str) -> list[str]:
    """A rule's text as words: whitespace separates, '...' quotes a word
    with spaces (a comment, an application name)."""
    words: list[str] = []
    rest = text.strip()
    while rest:
        if rest.startswith("'"):
            end = rest.find("'", 1)
            if end < 0:
                raise UsageError(f"unbalanced quote in {quote(text)}")
            words.append(rest[1:end])
            rest = rest[end + 1 :]
            if rest and not rest[0].isspace():
                raise UsageError(f"a quoted word must end at a space in {quote(text)}")
        else:
            word = rest.split(None, 1)[0]
            if "'" in word:
                raise UsageError(f"unbalanced quote in {quote(text)}")
            words.append(word)
            rest = rest[len(word) :]
        rest = rest.lstrip()
    return words


_KEYWORDS = ("in", "out", "on", "proto", "from", "to", "port", "app", "comment")


def parse_rules(words: Sequence[str], find_app: Callable[[str], AppPorts] | None = None) -> list[Rule]:
    """The words of a rule, in any form ufw accepts, as rules: one, or one
    per entry of an application profile's ports (``find_app`` looks a
    profile up; without it an application name needs its ports written:
    ``to any port 22 app OpenSSH``)."""
    if not words:
        raise UsageError("a rule starts with allow or deny")
    action = parse_action(words[0])
    rest = list(words[1:])
    comment = None
    if "comment" in rest:
        at = rest.index("comment")
        if at != len(rest) - 2:
            raise UsageError("'comment' goes last, with one word: ... comment 'TEXT'")
        comment = parse_comment(rest[-1])
        rest = rest[:-2]
    if len(rest) == 2 and rest[0] in ("in", "log", "log-all"):  # ufw: 'allow in 22/tcp'
        if rest[0] != "in":
            raise UsageError(f"{rest[0]!r} is not supported yet: pyxdp does not log rule matches (trace shows them)")
        rest = rest[1:]
    if len(rest) == 1:
        short = _short_form(action, rest[0])
        if short is not None:
            return [_checked(short._replace(comment=comment))]
        name, slash, sproto = rest[0].partition("/")
        svc = service_port(name, sproto or None) if not slash or sproto in ("tcp", "udp") else None
        if svc is not None:  # ufw: 'allow ssh', 'allow http/tcp' (a service name of /etc/services)
            return [_checked(Rule(action, proto=sproto or svc[1], dport=((svc[0], svc[0]),), comment=comment))]
        if slash:
            raise UsageError(f"bad port {quote(rest[0])}: no such service in /etc/services")
        if rest[0] not in _KEYWORDS:  # ufw: 'allow OpenSSH'
            rest = ["to", "any", "app", rest[0]]
    fields: dict[str, object] = {"action": action, "comment": comment}
    services: list[str] = []  # the protocols of service names given as ports ('to any port ssh')
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
            raise UsageError("pyxdp filters incoming packets only ('out' rules are not supported yet)")
        if word in ("log", "log-all"):
            raise UsageError(f"{word!r} is not supported yet: pyxdp does not log rule matches (trace shows them)")
        if word == "proto":
            fields["proto"] = parse_proto(take("a protocol after 'proto'"))
        elif word in ("from", "to"):
            side = "s" if word == "from" else "d"
            fields["src" if word == "from" else "dst"] = _parse_addr(take(f"an address, @SET or 'any' after {word!r}"))
            if pos < len(rest) and rest[pos] == "port":
                pos += 1
                text = take("a port after 'port'")
                svc = service_port(text) if _SERVICE_RE.match(text) else None
                fields[f"{side}port"] = ((svc[0], svc[0]),) if svc else parse_ports(text)
                if svc:
                    services.append(svc[1])
            if pos < len(rest) and rest[pos] == "app":
                pos += 1
                fields[f"{side}app"] = parse_app_name(take("an application name after 'app'"))
        elif word == "on":
            ifname = take("an interface after 'on'")
            if not is_ifname(ifname) or not IFNAME_RE.match(ifname):
                raise UsageError(f"bad interface name {quote(ifname)}")
            fields["iface"] = ifname
        elif word in ("port", "app"):
            raise UsageError(f"{word!r} goes after 'from ADDRESS' or 'to ADDRESS' (e.g. 'to any {word} "
                             f"{'22' if word == 'port' else 'OpenSSH'}')")
        elif _looks_like_port(word):
            raise UsageError(f"{quote(word)}: the short form 'allow|deny PORT[/PROTO]' stands alone; "
                             "otherwise write 'to any port N'")
        else:
            raise UsageError(f"unexpected {quote(word)}: expected proto, from, to, on or comment")
        seen.add(word)
    if services and "proto" not in fields:  # ufw: the service's protocol, when one side names it alone
        fields["proto"] = services[0] if len(set(services)) == 1 else "any"
    template = Rule(**fields)  # type: ignore[arg-type]
    return [_checked(r) for r in _expand(template, find_app)]


def _expand(t: Rule, find_app: Callable[[str], AppPorts] | None) -> list[Rule]:
    """A rule whose application names have no ports yet -> one rule per
    entry of the profiles' ports, as ufw makes them."""
    lookup = [(side, app) for side, app, ports in (("s", t.sapp, t.sport), ("d", t.dapp, t.dport))
              if app and not ports]
    if not lookup:
        return [t]
    if t.proto != "any":
        raise UsageError("Improper rule syntax ('proto' with 'app'): the profile gives the protocols")
    if find_app is None:
        raise UsageError(f"application {quote(lookup[0][1])} needs its ports ('to any port 22 app NAME') "
                         "or the profiles (pyxdp-load reads /etc/ufw/applications.d)")
    entries = {side: find_app(app) for side, app in lookup}
    out = [t]
    for side, prof in entries.items():
        nxt = []
        for r in out:
            for ranges, proto in prof.ports:
                if r.proto not in ("any", proto) and proto != "any":
                    continue  # ufw pairs a tcp source entry with tcp destination entries only
                r2 = r._replace(proto=proto if proto != "any" else r.proto)
                nxt.append(r2._replace(sport=ranges, sapp=prof.name) if side == "s" else
                           r2._replace(dport=ranges, dapp=prof.name))
        out = nxt
    if not out:
        raise UsageError("No rules found for application profile")
    return list(dict.fromkeys(out))


def _checked(rule: Rule) -> Rule:
    if (rule.sport or rule.dport) and rule.proto not in ("any", "tcp", "udp"):
        raise UsageError(f"ports need proto tcp, udp or any, not {rule.proto}")
    fams = {a.family for a in (rule.src, rule.dst)} - {0}
    if len(fams) > 1:
        raise UsageError("source and destination prefixes are of different families: the rule could never match")
    if (rule.proto == "icmp" and 6 in fams) or (rule.proto == "icmpv6" and 4 in fams):
        raise UsageError(f"proto {rule.proto} does not go with IPv{fams.pop()} prefixes")
    if rule.proto == "ipv6" and (6 in fams or rule.sets()):
        raise UsageError("proto ipv6 (IPv6 in IPv4, protocol 41) goes with IPv4 addresses only")
    if len(str(rule).encode()) >= RULE_TEXT:
        raise UsageError(f"rule too long (at most {RULE_TEXT - 1} bytes as text, comment included): {rule}")
    return rule


def parse_rule_words(words: Sequence[str], find_app: Callable[[str], AppPorts] | None = None) -> Rule:
    """The words of a rule, in any form ufw accepts, as a Rule (an
    application profile with several port entries makes several: use
    :func:`parse_rules`)."""
    rules = parse_rules(words, find_app)
    if len(rules) != 1:
        raise UsageError(f"application profile {rules[0].dapp or rules[0].sapp} makes {len(rules)} rules")
    return rules[0]


def _looks_like_port(word: str) -> bool:
    num = word.partition("/")[0]
    return bool(num) and all(is_digits(p.partition(":")[0]) for p in num.split(","))


def parse_rule(text: str) -> Rule:
    return parse_rule_words(tokenize(text))


# ---- ufw's identity of a rule ------------------------------------------------------------


class Plan(NamedTuple):
    """What adding a rule does: ``outcome`` is ``added``, ``inserted``,
    ``updated`` (the same match with another action or comment, replaced in
    place), ``exists`` or ``exists-insert`` (nothing changes, as ufw skips
    them); ``number`` is the rule's 1-based position; ``rules`` the new list."""

    outcome: str
    number: int
    rules: list[Rule]

    @property
    def changes(self) -> bool:
        return not self.outcome.startswith("exists")

    def message(self, rule: Rule) -> str:
        """ufw's words for it."""
        head = {"added": "Rule added", "inserted": "Rule inserted", "updated": "Rule updated",
                "exists": "Skipping adding existing rule", "exists-insert": "Skipping inserting existing rule"}
        return f"{head[self.outcome]} (number {self.number}): {rule}"


def plan_add(rules: Sequence[Rule], rule: Rule, position: int | None = None) -> Plan:
    """Append ``rule`` (``position`` None) or insert it before 1-based
    ``position``, as ufw does: an append of a rule whose match is there
    already replaces that rule when the action or comment differ, and is
    skipped when they do not; an insert of a match that is there is skipped."""
    out = list(rules)
    key = rule.match_key()
    at = next((i for i, r in enumerate(out) if r.match_key() == key), None)
    if position is not None:
        if not 1 <= position <= len(out) + 1:
            raise UsageError(f"insert {position}: positions are 1 to {len(out) + 1}")
        if at is not None:
            return Plan("exists-insert", at + 1, out)
        out.insert(position - 1, rule)
        return Plan("inserted", position, out)
    if at is None:
        return Plan("added", len(out) + 1, [*out, rule])
    if out[at] == rule:
        return Plan("exists", at + 1, out)
    out[at] = rule
    return Plan("updated", at + 1, out)


def find_rule(rules: Sequence[Rule], rule: Rule) -> int | None:
    """The 0-based index of the rule that ``delete RULE`` removes, as ufw
    finds it: the same match and action, and the same comment unless
    ``rule`` names none."""
    for i, r in enumerate(rules):
        if r.match_key() == rule.match_key() and r.action == rule.action and (
                rule.comment is None or r.comment == rule.comment):
            return i
    return None
