"""Ordered multi-field rules: the grammar (ufw's), the rule-set file format,
and the compiler that turns a rule list into the datapath's bit-vector
classes. Pure Python: no root, no libbpf.

A rule is ``allow|deny [proto tcp|udp|icmp|icmpv6|any] [from A [port P[:Q]]]
[to B [port P[:Q]]] [on IFACE]`` where an address is a prefix, ``@SET`` or
``any``. Rules are tried in order; the first that matches decides.

The datapath classifies each packet field separately (bpf-iptables' linear
bit-vector search): every field value maps to a class whose vector has bit i
set when rule i accepts that value; the AND of the field vectors has the
first matching rule as its lowest bit."""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable, Sequence

from ._record import TYPE_CHECKING, Record
from .entries import MASKS4, MASKS6, Prefix, _Tokens, parse_prefix
from .errors import UsageError
from .layout import Action

if TYPE_CHECKING:
    from typing import Any, Optional

    PortRange = Optional[tuple[int, int]]

RULE_PROTOS = {"any": 0, "tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
PROTO_CLASS = (6, 17, 1, 58, None)  # the datapath's protocol classes, in order
RULE_SETS = 8  # sets one rule set may reference per direction (source / destination)
DEFAULT_RULES = 1024
MAX_RULES = 8192
RULE_TEXT = 192  # bytes the datapath's rdefs map keeps per rule
SET_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,31}\Z")
IFNAME_MAX = 15
IFNAME_RE = re.compile(r"[A-Za-z0-9_.:@+-]+\Z")  # what rule texts and files can carry unquoted


def classes_per_gen(capacity: int) -> int:
    """Vector classes one generation may need (CLASSES() in the C source):
    5 protocols; per side r rule prefixes + 2 defaults, 2^8 set masks,
    2r + 1 port intervals + no-port; 1,024 interfaces + 1 (the ifaces map's
    size): 6r + 1550 at most."""
    return 6 * capacity + 1600


def check_capacity(n: int) -> int:
    if n % 64 or not 64 <= n <= MAX_RULES:
        raise UsageError(f"rule capacity {n}: a multiple of 64 from 64 to {MAX_RULES}")
    return n


class Addr(Record):
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


def _ports(r: PortRange) -> str:
    if r is None:
        return ""
    return f" port {r[0]}" if r[0] == r[1] else f" port {r[0]}:{r[1]}"


class Rule(Record):
    """One ordered rule. ``str(rule)`` is its canonical text, which parses
    back to the same rule."""

    action: Action
    proto: str = "any"
    src: Addr = ANY
    sport: PortRange = None
    dst: Addr = ANY
    dport: PortRange = None
    iface: str | None = None

    def __str__(self) -> str:
        words = self.action.name.lower()
        if self.proto != "any":
            words += f" proto {self.proto}"
        if self.src != ANY or self.sport:
            words += f" from {self.src}{_ports(self.sport)}"
        if self.dst != ANY or self.dport:
            words += f" to {self.dst}{_ports(self.dport)}"
        if self.iface:
            words += f" on {self.iface}"
        return words

    def sets(self) -> list[str]:
        return [a.set for a in (self.src, self.dst) if a.set]


# ---- grammar -------------------------------------------------------------------


def parse_port_range(text: str) -> tuple[int, int]:
    """``22`` or ``1000:2000`` (ufw's range syntax)."""
    lo_s, colon, hi_s = text.partition(":")
    try:
        lo = int(lo_s) if lo_s.isdigit() else -1
        hi = int(hi_s) if colon and hi_s.isdigit() else (lo if not colon else -1)
    except ValueError:
        lo = hi = -1
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535):
        raise UsageError(f"bad port {text!r}: a port 0 to 65535, or a range LOW:HIGH")
    if lo > hi:
        raise UsageError(f"bad port range {text!r}: the low port comes first")
    return lo, hi


def parse_set_name(text: str) -> str:
    name = text[1:] if text.startswith("@") else text
    if not SET_NAME_RE.match(name):
        raise UsageError(f"bad set name {text!r}: 1 to 31 letters, digits, '_' or '-'")
    return name


def _parse_addr(word: str) -> Addr:
    if word == "any":
        return ANY
    if word.startswith("@"):
        return Addr(set=parse_set_name(word))
    return Addr(prefix=parse_prefix(word))


def parse_rule_words(words: Sequence[str]) -> Rule:
    """``allow|deny [proto P] [from A [port P]] [to B [port P]] [on IFACE]``."""
    toks = _Tokens(list(words))
    act_word = toks.take("allow or deny")
    if act_word not in ("allow", "deny"):
        raise UsageError(f"a rule starts with allow or deny, not {act_word!r}")
    fields: dict[str, Any] = {"action": Action.ALLOW if act_word == "allow" else Action.DENY}
    seen: set[str] = set()
    while toks.peek() is not None:
        word = toks.take("a word")
        if word in seen:
            raise UsageError(f"{word!r} given twice in one rule")
        if word == "proto":
            proto = toks.take("a protocol after 'proto'")
            if proto not in RULE_PROTOS:
                raise UsageError(f"bad protocol {proto!r}: tcp, udp, icmp, icmpv6 or any")
            fields["proto"] = proto
        elif word in ("from", "to"):
            side = _parse_addr(toks.take(f"an address, @SET or 'any' after {word!r}"))
            fields["src" if word == "from" else "dst"] = side
            if toks.peek() == "port":
                toks.take("port")
                fields["sport" if word == "from" else "dport"] = parse_port_range(toks.take("a port after 'port'"))
        elif word == "on":
            ifname = toks.take("an interface after 'on'")
            if not 0 < len(ifname) <= IFNAME_MAX or not IFNAME_RE.match(ifname):
                raise UsageError(f"bad interface name {ifname!r}")
            fields["iface"] = ifname
        elif word == "port":
            raise UsageError("'port' goes after 'from ADDRESS' or 'to ADDRESS' (e.g. 'to any port 22')")
        else:
            raise UsageError(f"unexpected {word!r}: expected proto, from, to or on")
        seen.add(word)
    rule = Rule(**fields)
    if (rule.sport or rule.dport) and rule.proto not in ("any", "tcp", "udp"):
        raise UsageError(f"ports need proto tcp, udp or any, not {rule.proto}")
    fams = {a.family for a in (rule.src, rule.dst)} - {0}
    if len(fams) > 1:
        raise UsageError("source and destination prefixes are of different families: the rule could never match")
    if (rule.proto == "icmp" and 6 in fams) or (rule.proto == "icmpv6" and 4 in fams):
        raise UsageError(f"proto {rule.proto} does not go with IPv{fams.pop()} prefixes")
    return rule


def parse_rule(text: str) -> Rule:
    return parse_rule_words(text.split())


# ---- compiling to the datapath's classes ---------------------------------------


class Tables(Record):
    """One generation of the datapath's rule tables. Class ids are absolute
    (this generation's base added)."""

    n_words: int
    vectors: dict[int, int]  # class id -> bit vector (bit i: rule i)
    proto_cls: tuple[int, ...]  # per PROTO_CLASS
    lit: dict[tuple[int, int], dict[Prefix, int]]  # (dir, family) -> prefix -> class
    lit_dflt: tuple[int, ...]  # [dir * 2 + (family == 6)]
    set_ids: tuple[tuple[int, ...], tuple[int, ...]]  # per dir: referenced set ids
    setb: tuple[int, int]  # per dir: class of set-hit mask 0
    ports: tuple[array[int], array[int]]  # per dir: port -> class
    noport: tuple[int, int]
    ifaces: dict[int, int]  # ifindex -> class
    iface_dflt: int


class _Classes:
    """Allocates class ids; equal vectors share one (except in blocks)."""

    def __init__(self, base: int, limit: int) -> None:
        self.base = base
        self.limit = limit
        self.ids: dict[int, int] = {}
        self.vectors: dict[int, int] = {}

    def _new(self, vec: int) -> int:
        if len(self.vectors) >= self.limit:  # classes_per_gen bounds what a valid rule set needs
            raise UsageError("the rule set needs more vector classes than the maps hold")
        cid = self.base + len(self.vectors)
        self.vectors[cid] = vec
        return cid

    def __call__(self, vec: int) -> int:
        cid = self.ids.get(vec)
        if cid is None:
            cid = self.ids[vec] = self._new(vec)
        return cid

    def block(self, vecs: list[int]) -> int:
        """Consecutive classes for ``vecs`` (the datapath indexes them); the first id."""
        ids = [self._new(v) for v in vecs]
        return ids[0]


def compile_rules(rules: Sequence[Rule], capacity: int, gen: int, set_ids: dict[str, int],
                  ifindexes: dict[str, list[int]]) -> Tables:
    """The tables of generation ``gen`` for ``rules`` (first match wins)."""
    n = len(rules)
    if n > capacity:
        raise UsageError(f"{n} rules: the state holds at most {capacity} (--rules when it is created)")
    per_gen = classes_per_gen(capacity)
    cls = _Classes(gen * per_gen, per_gen)
    bits = [1 << i for i in range(n)]

    proto_cls = tuple(
        cls(_bits(bits, (r.proto == "any" or RULE_PROTOS[r.proto] == num for r in rules)))
        for num in PROTO_CLASS[:4]
    ) + (cls(_bits(bits, (r.proto == "any" for r in rules))),)

    lit: dict[tuple[int, int], dict[Prefix, int]] = {}
    lit_dflt: list[int] = []
    set_lists: list[tuple[int, ...]] = []
    setb: list[int] = []
    ports: list[array[int]] = []
    noport: list[int] = []
    for d in (0, 1):
        sides = [r.src if d == 0 else r.dst for r in rules]
        # literal stage: rules with a set pass here (their set stage decides)
        for fam in (4, 6):
            base = _bits(bits, (a.prefix is None for a in sides))
            own: dict[Prefix, int] = {}
            for i, a in enumerate(sides):
                if a.prefix is not None and a.prefix.family == fam:
                    own[a.prefix] = own.get(a.prefix, 0) | bits[i]
            lens = sorted({p.plen for p in own})
            table: dict[Prefix, int] = {}
            for p in own:
                vec = base
                for plen in lens:
                    if plen > p.plen:
                        break
                    q = own.get(_truncate(p, plen))
                    if q:
                        vec |= q
                table[p] = cls(vec)
            lit[(d, fam)] = table
            lit_dflt.append(cls(base))
        # set stage: which of the referenced sets hold the address
        names = list(dict.fromkeys(a.set for a in sides if a.set))
        if len(names) > RULE_SETS:
            where = "source" if d == 0 else "destination"
            raise UsageError(f"rules reference {len(names)} {where} sets; at most {RULE_SETS}")
        missing = [s for s in names if s not in set_ids]
        if missing:
            raise UsageError(f"no set @{missing[0]} (create it with 'pyxdp-load set add {missing[0]} ...')")
        set_lists.append(tuple(set_ids[s] for s in names))
        no_set = _bits(bits, (a.set is None for a in sides))
        slot_bits = [_bits(bits, (a.set == s for a in sides)) for s in names]
        by_mask = []
        for mask in range(1 << len(names)):
            vec = no_set
            for i, sb in enumerate(slot_bits):
                if mask >> i & 1:
                    vec |= sb
            by_mask.append(vec)
        setb.append(cls.block(by_mask))  # the datapath reads class setb + mask
        # ports: a sweep over the range ends
        rngs = [r.sport if d == 0 else r.dport for r in rules]
        none = _bits(bits, (g is None for g in rngs))
        toggles: dict[int, int] = {}
        for i, g in enumerate(rngs):
            if g is not None:
                toggles[g[0]] = toggles.get(g[0], 0) ^ bits[i]
                toggles[g[1] + 1] = toggles.get(g[1] + 1, 0) ^ bits[i]
        arr = array("I", bytes(4 * 65536))
        cur = none
        edges = sorted(toggles) + [65536]
        start = 0
        for e in edges:
            if e > start:
                arr[start:e] = array("I", [cls(cur)]) * (e - start)
            if e < 65536:
                cur ^= toggles[e]
            start = max(start, e)
        ports.append(arr)
        noport.append(cls(none))

    iface_none = _bits(bits, (r.iface is None for r in rules))
    ifaces: dict[int, int] = {}
    named: dict[int, int] = {}
    for i, r in enumerate(rules):
        for idx in ifindexes.get(r.iface, []) if r.iface else []:
            named[idx] = named.get(idx, 0) | bits[i]
    for idx, vec in named.items():
        ifaces[idx] = cls(iface_none | vec)
    iface_dflt = cls(iface_none)
    return Tables(
        n_words=(n + 63) // 64,
        vectors=cls.vectors,
        proto_cls=proto_cls,
        lit=lit,
        lit_dflt=tuple(lit_dflt),
        set_ids=(set_lists[0], set_lists[1]),
        setb=(setb[0], setb[1]),
        ports=(ports[0], ports[1]),
        noport=(noport[0], noport[1]),
        ifaces=ifaces,
        iface_dflt=iface_dflt,
    )


def _bits(bits: list[int], flags: Iterable[bool]) -> int:
    v = 0
    for b, f in zip(bits, flags):
        if f:
            v |= b
    return v


def _truncate(p: Prefix, plen: int) -> Prefix:
    masks = MASKS4 if p.family == 4 else MASKS6
    return Prefix(p.family, bytes(a & b for a, b in zip(p.addr, masks[plen])), plen)


# ---- the rule-set file (TOML) ---------------------------------------------------


def _toml_loads(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def _line_of(lines: list[str], needle: str, start: int = 0) -> int:
    """1-based number of the first line from ``start`` quoting ``needle``."""
    for i in range(start, len(lines)):
        if f'"{needle}"' in lines[i] or f"'{needle}'" in lines[i]:
            return i + 1
    return 0


def parse_ruleset(text: str, source: str = "input") -> tuple[list[Rule], dict[str, list[Prefix]], str | None]:
    """Rules, sets and policy from a rule-set file. Errors name the line."""
    lines = text.splitlines()
    try:
        doc = _toml_loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError says "(at line N, column M)"
        raise UsageError(f"{source}: {exc}") from None

    def fail(msg: str, needle: str | None = None, key: str | None = None) -> UsageError:
        line = _line_of(lines, needle) if needle is not None else 0
        if not line and key is not None:
            line = next((i + 1 for i, ln in enumerate(lines) if ln.lstrip().startswith(key)), 0)
        return UsageError(f"{source}" + (f" line {line}" if line else "") + f": {msg}")

    unknown = sorted(set(doc) - {"policy", "rules", "sets"})
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (expected policy, rules, sets)", key=unknown[0])
    policy = doc.get("policy")
    if policy is not None and policy not in ("pass", "drop"):
        raise fail(f"policy must be \"pass\" or \"drop\", not {policy!r}", key="policy")
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list) or not all(isinstance(r, str) for r in raw_rules):
        raise fail("rules must be a list of strings, one rule each", key="rules")
    rules = []
    for text_rule in raw_rules:
        try:
            rules.append(parse_rule(text_rule))
        except UsageError as exc:
            raise fail(f"{exc} (in rule {text_rule!r})", needle=text_rule) from None
    seen: set[Rule] = set()
    for r in rules:
        if r in seen:
            raise fail(f"rule given twice: {r}", needle=str(r))
        seen.add(r)
    raw_sets = doc.get("sets", {})
    if not isinstance(raw_sets, dict):
        raise fail("sets must be a table of NAME = [prefixes]", key="sets")
    sets: dict[str, list[Prefix]] = {}
    for name, members in raw_sets.items():
        if not SET_NAME_RE.match(name):  # a bare name here: no '@'
            raise fail(f"bad set name {name!r}: 1 to 31 letters, digits, '_' or '-'", key=name)
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise fail(f"set {name} must be a list of prefix strings", key=name)
        out = []
        for m in members:
            try:
                out.append(parse_prefix(m))
            except UsageError as exc:
                raise fail(f"set {name}: {exc}", needle=m) from None
        sets[name] = out
    used = {s for r in rules for s in r.sets()}
    missing = sorted(used - set(sets))
    if missing:
        raise fail(f"a rule uses @{missing[0]}, which the file does not define under [sets]", needle=None,
                   key="rules")
    return rules, sets, policy


def format_ruleset(rules: Sequence[Rule], sets: dict[str, list[Prefix]], policy: str | None) -> str:
    """The rule-set file for ``save`` (``apply`` reads it back unchanged)."""
    out = ["# pyxdp rule set: 'pyxdp-load apply FILE' installs it, 'pyxdp-load save' writes it", ""]
    if policy is not None:
        out.append(f'policy = "{policy}"')
    out.append("rules = [")
    out += [f'    "{r}",' for r in rules]
    out += ["]", "", "[sets]"]
    for name, members in sets.items():
        out.append(f"{name} = [")
        out += [f'    "{p}",' for p in members]
        out.append("]")
    return "\n".join(out) + "\n"
