"""The rule compiler: a rule list -> one generation of the datapath's
bit-vector tables (bpf-iptables' linear bit-vector search). Each packet field
maps to a class whose vector has bit i set when rule i accepts that value;
the AND of the field vectors has the first matching rule as its lowest bit.
Pure Python: no root, no libbpf."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ..errors import UsageError
from ..layout import CLASS_EXTRA, CLASS_PER_RULE, RULE_SETS, RuleField
from .fastpath import rule_forms
from .prefix import Prefix
from .rules import Rule, proto_number

PROTO_CLASS = (6, 17, 1, 58, None)  # the datapath's protocol classes, in order


def classes_per_gen(capacity: int) -> int:
    """Vector classes one generation holds (CLASSES() in the C source):
    5 protocols + all-ones (and 256, one per protocol number, when a rule
    names a protocol other than tcp, udp, icmp, icmpv6); per side r rule prefixes + 2 defaults, 2^8 set
    masks, 2 r + 1 port intervals (one range per rule) + no-port; 512
    interfaces + 1: 6 r + 1,600. Port lists can need more (each range adds
    up to two intervals); the compiler refuses a rule set that needs more."""
    return CLASS_PER_RULE * capacity + CLASS_EXTRA


class Tables(NamedTuple):
    """One generation of the datapath's rule tables. Class ids are absolute
    (this generation's base added)."""

    n_words: int
    vectors: dict[int, int]  # class id -> bit vector (bit i: rule i)
    all_cls: int  # the all-ones vector
    fields: int  # RuleField bits: fields some rule constrains, lit lookups worth making, fast-path forms
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
        if len(self.vectors) >= self.limit:
            raise UsageError(
                f"the rule set needs more than {self.limit} vector classes (too many distinct port ranges: the "
                "tables hold about one range per rule and side on average); use fewer port ranges, or make the "
                "state with a larger rule capacity (attach --rules N)")
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


def _bits(bits: list[int], flags: Iterable[bool]) -> int:
    v = 0
    for b, f in zip(bits, flags):
        if f:
            v |= b
    return v


def compile_rules(rules: Sequence[Rule], capacity: int, gen: int, set_ids: dict[str, int],
                  ifindexes: dict[str, list[int]]) -> Tables:
    """The tables of generation ``gen`` for ``rules`` (first match wins)."""
    n = len(rules)
    if n > capacity:
        raise UsageError(f"{n} rules: the state holds at most {capacity} ('pyxdp-load resize --rules N' makes room)")
    per_gen = classes_per_gen(capacity)
    cls = _Classes(gen * per_gen, per_gen)
    bits = [1 << i for i in range(n)]
    everyone = (1 << n) - 1
    all_cls = cls(everyone)
    fields = 0

    if any(r.proto != "any" for r in rules):
        fields |= RuleField.PROTO
    nums = [proto_number(r.proto) for r in rules]
    proto_cls = tuple(
        cls(_bits(bits, (n == 0 or n == num for n in nums)))
        for num in PROTO_CLASS[:4]
    ) + (cls(_bits(bits, (n == 0 for n in nums))),)
    if any(n not in PROTO_CLASS[:4] and n != 0 for n in nums):
        # another protocol (esp, gre, 112): one class per protocol number, the datapath adds the number
        fields |= RuleField.PROTO_NUM
        proto_cls += (cls.block([_bits(bits, (n in (0, num) for n in nums)) for num in range(256)]),)
    else:
        proto_cls += (0,)

    lit: dict[tuple[int, int], dict[Prefix, int]] = {}
    lit_dflt: list[int] = []
    set_lists: list[tuple[int, ...]] = []
    setb: list[int] = []
    ports: list[array[int]] = []
    noport: list[int] = []
    lit_flags = ((RuleField.LIT4_SRC, RuleField.LIT6_SRC), (RuleField.LIT4_DST, RuleField.LIT6_DST))
    for d in (0, 1):
        sides = [r.src if d == 0 else r.dst for r in rules]
        # literal stage: rules with a set (or any) pass here; the set stage decides
        for fi, fam in enumerate((4, 6)):
            # proto ipv6 (IPv6 in IPv4) is an IPv4 protocol: such a rule never matches an IPv6 packet
            base = _bits(bits, (a.prefix is None and not (fam == 6 and r.proto == "ipv6")
                                for a, r in zip(sides, rules)))
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
                    q = own.get(p.truncate(plen))
                    if q:
                        vec |= q
                table[p] = cls(vec)
            lit[(d, fam)] = table
            lit_dflt.append(cls(base))
            if table:
                fields |= lit_flags[d][fi]
        # set stage: which of the referenced sets hold the address
        names = list(dict.fromkeys(a.set for a in sides if a.set))
        if len(names) > RULE_SETS:
            where = "source" if d == 0 else "destination"
            raise UsageError(f"rules reference {len(names)} {where} sets; at most {RULE_SETS}")
        missing = [s for s in names if s not in set_ids]
        if missing:
            raise UsageError(f"no set @{missing[0]} (create it with 'pyxdp-load set add {missing[0]} ...')")
        if names:
            fields |= RuleField.SSET if d == 0 else RuleField.DSET
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
        if any(rngs):
            fields |= RuleField.SPORT if d == 0 else RuleField.DPORT
        none = _bits(bits, (g is None for g in rngs))
        toggles: dict[int, int] = {}
        for i, g in enumerate(rngs):
            for lo, hi in g or ():  # ranges of one rule never overlap (parse_ports merges them)
                toggles[lo] = toggles.get(lo, 0) ^ bits[i]
                toggles[hi + 1] = toggles.get(hi + 1, 0) ^ bits[i]
        arr = array("I", bytes(4 * 65536))
        cur = none
        start = 0
        for e in [*sorted(toggles), 65536]:
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
    if any(r.iface for r in rules):
        fields |= RuleField.IFACE
    iface_dflt = cls(iface_none)
    fields |= rule_forms(rules)
    return Tables(
        n_words=(n + 63) // 64,
        vectors=cls.vectors,
        all_cls=all_cls,
        fields=fields,
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
