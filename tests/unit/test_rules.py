"""The rule grammar (pyxdp.model.rules) and the rule compiler (pyxdp.model.compiler),
without root: no BPF, no kernel.

The grammar: every form ufw accepts -> canonical text -> the same Rule, by
table and by hypothesis. The compiler: for random rule lists and random
packets, the lowest set bit of the AND of the vectors the Tables give (the
datapath's lookups in bpf/xdp_filter.bpf.c match_rules, emulated here) is the
first rule a plain linear scan finds."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from socket import AF_INET, AF_INET6, inet_pton
from typing import NamedTuple, Optional

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyxdp import layout as L
from pyxdp.errors import UsageError
from pyxdp.layout import RULE_SETS, RULE_TEXT, Action, RuleField
from pyxdp.model import fastpath
from pyxdp.model.compiler import PROTO_CLASS, Tables, classes_per_gen, compile_rules
from pyxdp.model.prefix import Prefix, parse_prefix
from pyxdp.model.rules import (
    ANY,
    MAX_PORT_RANGES,
    RULE_PROTOS,
    Addr,
    Rule,
    parse_ports,
    parse_rule,
    parse_rule_words,
    parse_set_name,
    proto_number,
)
from pyxdp.names import IFNAME_MAX

EXAMPLES = int(os.environ.get("PYXDP_GRAMMAR_EXAMPLES", "150"))
FAST = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def P(text: str) -> Prefix:
    return parse_prefix(text)


def R(action: str = "allow", **kw: object) -> Rule:
    return Rule(Action.ALLOW if action == "allow" else Action.DENY, **kw)  # type: ignore[arg-type]


# ---- every ufw form -> canonical text -> the same Rule ----------------------------------

FORMS = [
    # (typed as a ufw user would, canonical text, the Rule)
    ("allow 22", "allow to any port 22", R(dport=((22, 22),))),
    ("deny 22", "deny to any port 22", R("deny", dport=((22, 22),))),
    ("allow 22/tcp", "allow proto tcp to any port 22", R(proto="tcp", dport=((22, 22),))),
    ("deny 53/udp", "deny proto udp to any port 53", R("deny", proto="udp", dport=((53, 53),))),
    ("allow 1000:2000/tcp", "allow proto tcp to any port 1000:2000", R(proto="tcp", dport=((1000, 2000),))),
    ("allow 80,443/tcp", "allow proto tcp to any port 80,443", R(proto="tcp", dport=((80, 80), (443, 443)))),
    ("allow 8000:8080,22/udp", "allow proto udp to any port 22,8000:8080",
     R(proto="udp", dport=((22, 22), (8000, 8080)))),
    ("deny from 10.0.0.0/8", "deny from 10.0.0.0/8", R("deny", src=Addr(P("10.0.0.0/8")))),
    ("deny from any", "deny", R("deny")),
    ("deny from any to any", "deny", R("deny")),
    ("deny from 0.0.0.0/0", "deny from 0.0.0.0/0", R("deny", src=Addr(P("0.0.0.0/0")))),
    ("deny from 192.0.2.7", "deny from 192.0.2.7/32", R("deny", src=Addr(P("192.0.2.7/32")))),
    ("deny from 2001::1", "deny from 2001::1/128", R("deny", src=Addr(P("2001::1/128")))),
    ("deny from 2001:DB8::/32", "deny from 2001:db8::/32", R("deny", src=Addr(P("2001:db8::/32")))),
    ("deny proto tcp to any port 22", "deny proto tcp to any port 22", R("deny", proto="tcp", dport=((22, 22),))),
    ("allow proto tcp from 192.0.2.0/24 to any port 22", "allow proto tcp from 192.0.2.0/24 to any port 22",
     R(proto="tcp", src=Addr(P("192.0.2.0/24")), dport=((22, 22),))),
    ("allow from 192.0.2.0/24 to any port 22 proto tcp", "allow proto tcp from 192.0.2.0/24 to any port 22",
     R(proto="tcp", src=Addr(P("192.0.2.0/24")), dport=((22, 22),))),
    ("allow to any port 22 from 192.0.2.0/24", "allow from 192.0.2.0/24 to any port 22",
     R(src=Addr(P("192.0.2.0/24")), dport=((22, 22),))),
    ("allow in on eth0 to any port 80", "allow to any port 80 on eth0", R(dport=((80, 80),), iface="eth0")),
    ("allow in on eth0", "allow on eth0", R(iface="eth0")),
    ("deny in from 198.51.100.0/24", "deny from 198.51.100.0/24", R("deny", src=Addr(P("198.51.100.0/24")))),
    ("deny from @banned", "deny from @banned", R("deny", src=Addr(set="banned"))),
    ("allow from @office to @servers port 22", "allow from @office to @servers port 22",
     R(src=Addr(set="office"), dst=Addr(set="servers"), dport=((22, 22),))),
    ("deny from @v4and6 to 2001:db8::/32", "deny from @v4and6 to 2001:db8::/32",
     R("deny", src=Addr(set="v4and6"), dst=Addr(P("2001:db8::/32")))),
    ("allow to any port 443,80,81:90,85", "allow to any port 80:90,443", R(dport=((80, 90), (443, 443)))),
    ("deny proto udp from any port 53", "deny proto udp from any port 53", R("deny", proto="udp", sport=((53, 53),))),
    ("allow proto tcp from 192.0.2.0/24 port 1024:65535 to 203.0.113.5 port 22",
     "allow proto tcp from 192.0.2.0/24 port 1024:65535 to 203.0.113.5/32 port 22",
     R(proto="tcp", src=Addr(P("192.0.2.0/24")), sport=((1024, 65535),), dst=Addr(P("203.0.113.5/32")),
       dport=((22, 22),))),
    ("allow proto icmp from 192.0.2.0/24", "allow proto icmp from 192.0.2.0/24",
     R(proto="icmp", src=Addr(P("192.0.2.0/24")))),
    ("deny proto icmpv6 to 2001:db8::/32", "deny proto icmpv6 to 2001:db8::/32",
     R("deny", proto="icmpv6", dst=Addr(P("2001:db8::/32")))),
    ("allow proto any to any port 0:65535", "allow to any port 0:65535", R(dport=((0, 65535),))),
    ("deny", "deny", R("deny")),
    # ufw strips a leading 'in' before the short form: `ufw allow in 22/tcp` is `ufw allow 22/tcp`
    ("allow in 22/tcp", "allow proto tcp to any port 22", R(proto="tcp", dport=((22, 22),))),
    ("deny in 22", "deny to any port 22", R("deny", dport=((22, 22),))),
]


@pytest.mark.parametrize("typed,canonical,rule", FORMS, ids=[f[0] for f in FORMS])
def test_every_form_gives_its_rule_and_canonical_text(typed: str, canonical: str, rule: Rule) -> None:
    got = parse_rule(typed)
    assert got == rule
    assert str(got) == canonical
    assert parse_rule(canonical) == rule
    assert str(parse_rule(canonical)) == canonical
    assert parse_rule_words(typed.split()) == rule


def test_the_short_form_is_tcp_and_udp() -> None:
    """`deny 22` is ufw's tcp-and-udp: proto any with a port (so ICMP never matches it)."""
    assert parse_rule("deny 22") == parse_rule("deny to any port 22") == parse_rule("deny proto any to any port 22")
    assert parse_rule("allow 22/tcp") == parse_rule("allow proto tcp to any port 22")


REFUSED = [
    ("", "starts with allow or deny"),
    ("permit from any", "starts with allow or deny, not 'permit'"),
    ("allow 1000:2000", "needs a protocol"),
    ("allow 80,443", "needs a protocol"),
    ("allow 22/icmp", "PORT/tcp or PORT/udp"),
    ("allow 70000", "bad port '70000'"),
    ("allow out 22", "incoming packets only"),
    ("allow out on eth0 to any port 22", "incoming packets only"),
    ("deny out to any", "incoming packets only"),
    ("reject 22", "'reject' is not supported"),
    ("reject from 10.0.0.0/8", "'reject' is not supported"),
    ("limit 22/tcp", "'limit' is not supported"),
    ("limit ssh", "'limit' is not supported"),
    ("allow proto icmp to any port 22", "ports need proto tcp, udp or any, not icmp"),
    ("allow proto icmpv6 from any port 53", "ports need proto tcp, udp or any, not icmpv6"),
    ("allow from 10.0.0.0/8 to 2001:db8::/32", "different families"),
    ("deny from 2001::1 to 192.0.2.1", "different families"),
    ("allow proto icmp from 2001:db8::/32", "does not go with IPv6"),
    ("allow proto icmpv6 to 10.0.0.0/8", "does not go with IPv4"),
    ("allow proto xyz", "Unsupported protocol 'xyz'"),
    ("deny log 22/tcp", "'log' is not supported yet"),
    ("deny log-all from 192.0.2.1", "'log-all' is not supported yet"),
    ("allow proto 0", "Unsupported protocol '0'"),
    ("allow proto 255", "Unsupported protocol '255'"),
    ("allow proto gre to any port 22", "ports need proto tcp, udp or any, not gre"),
    ("allow proto ipv6 from 2001:db8::/32", "goes with IPv4 addresses only"),
    ("allow proto ipv6 from @banned", "goes with IPv4 addresses only"),
    ("allow 22/tcp comment", "'comment' goes last, with one word"),
    ("allow 22/tcp comment a b", "'comment' goes last, with one word"),
    ("allow 22/tcp comment 'it's'", "a quoted word must end at a space"),
    ("allow 22/tcp comment 'open", "unbalanced quote"),
    ("allow OpenSSH", "needs its ports"),
    ("allow to any app", "expected an application name after 'app' at the end"),
    ("allow app OpenSSH", "'app' goes after 'from ADDRESS' or 'to ADDRESS'"),
    ("allow to any app 9", "bad application name '9'"),
    ("allow proto", "expected a protocol after 'proto' at the end"),
    ("allow to any port 2000:1000", "the low port comes first"),
    ("allow to any port 65536", "bad port '65536'"),
    ("allow to any port ²", "bad port"),
    ("allow to any port 2٢", "bad port"),
    ("allow to any port " + ",".join(str(p) for p in range(1, 2 * MAX_PORT_RANGES + 1, 2)) + ",99",
     f"at most {MAX_PORT_RANGES}"),
    ("allow to any port", "expected a port after 'port' at the end"),
    ("allow to", "expected an address, @SET or 'any' after 'to' at the end"),
    ("allow from 10.0.0.1/8", "did you mean 10.0.0.0/8"),
    ("allow from ::ffff:192.0.2.9", "192.0.2.9"),
    ("allow from @no.such", "bad set name"),
    ("allow from @", "bad set name"),
    ("allow from @" + "a" * 32, "bad set name"),
    ("allow on", "expected an interface after 'on' at the end"),
    ('allow on a"b', "bad interface name"),
    ("allow on " + "e" * (IFNAME_MAX + 1), "bad interface name"),
    ("allow port 22", "'port' goes after"),
    ("allow to any port 22 port 23", "'port' goes after"),
    ("allow 22 from any", "stands alone"),
    ("allow from any 22", "stands alone"),
    ("allow 2001::1", "bad port"),
    ("allow bogus", "application 'bogus' needs its ports"),
    # the same word twice
    ("allow from any from 10.0.0.0/8", "'from' given twice"),
    ("allow to any to 10.0.0.0/8", "'to' given twice"),
    ("allow proto tcp proto udp", "'proto' given twice"),
    ("allow proto tcp to any port 22 proto tcp", "'proto' given twice"),
    ("allow on eth0 on eth1", "'on' given twice"),
    ("allow in in from any", "'in' given twice"),
]


@pytest.mark.parametrize("text,says", REFUSED, ids=[r[0][:60] for r in REFUSED])
def test_bad_rules_are_refused_with_a_clear_message(text: str, says: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_rule(text)
    assert says in str(exc.value)
    assert "\n" not in str(exc.value)


def test_too_long_a_rule_is_refused() -> None:
    ports = ",".join(f"{10000 + 2 * i}" for i in range(MAX_PORT_RANGES))
    text = (f"allow proto tcp from 2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff port {ports} "
            f"to 2001:db8:aaaa:bbbb:cccc:dddd:eeee:fff0 port {ports} on abcdefghijklmno")
    with pytest.raises(UsageError, match=rf"rule too long \(at most {RULE_TEXT - 1} bytes as text, comment "):
        parse_rule(text)


@pytest.mark.parametrize("huge", [
    "allow from " + "1" * 100_000,
    "x" * 100_000,
    "allow to any port " + "9" * 100_000,
    "allow on " + "e" * 100_000,
    "allow from @" + "s" * 100_000,
    "allow proto " + "p" * 100_000,
    "allow " + "2" * 100_000,
    "deny bogus" + "b" * 100_000,
])
def test_error_messages_stay_short(huge: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_rule(huge)
    assert len(str(exc.value)) < 300


@pytest.mark.parametrize("text,ranges", [
    ("22", ((22, 22),)),
    ("0", ((0, 0),)),
    ("65535", ((65535, 65535),)),
    ("1000:2000", ((1000, 2000),)),
    ("5:5", ((5, 5),)),
    ("443,80,81:90,85", ((80, 90), (443, 443))),
    ("1:2,3:4", ((1, 4),)),
    ("10:20,15:30,1", ((1, 1), (10, 30))),
    ("22,22", ((22, 22),)),
])
def test_port_lists_are_sorted_and_merged(text: str, ranges: tuple[tuple[int, int], ...]) -> None:
    assert parse_ports(text) == ranges


@pytest.mark.parametrize("bad", ["", ",", "1,", ":5", "5:", "-1", "1:2:3", "0x10", "²", "1_000", " 22", "22 "])
def test_bad_ports(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_ports(bad)


def test_set_names() -> None:
    assert parse_set_name("@banned") == parse_set_name("banned") == "banned"
    assert parse_set_name("@a-b_C9") == "a-b_C9"
    for bad in ("@", "", "a.b", "a b", "@" + "x" * 32, "é"):
        with pytest.raises(UsageError, match="bad set name"):
            parse_set_name(bad)
    assert set(RULE_PROTOS) == {"any", "tcp", "udp", "icmp", "icmpv6", "esp", "ah", "gre", "ipv6", "igmp", "vrrp"}


# ---- hypothesis: random Rule -> str -> parse_rule -> the same Rule ---------------------------

_IFCHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@+-"
_SETCHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


def _merge(ranges: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return tuple(out)


@st.composite
def random_prefix(draw: st.DrawFn, family: int) -> Prefix:
    n = 4 if family == 4 else 16
    raw = draw(st.binary(min_size=n, max_size=n))
    plen = draw(st.integers(0, 8 * n))
    p = Prefix(family, raw, n * 8).truncate(plen)
    # IPv4-mapped IPv6 (::ffff:a.b.c.d) is refused on purpose: packets carry IPv4 as IPv4
    assume(not (family == 6 and p.addr[:12] == b"\0" * 10 + b"\xff\xff"))
    return p


@st.composite
def port_ranges(draw: st.DrawFn, space: Sequence[int] = ()) -> tuple[tuple[int, int], ...]:
    ports = st.sampled_from(space) if space else st.integers(0, 65535)
    pairs = draw(st.lists(st.tuples(ports, ports), min_size=1, max_size=MAX_PORT_RANGES))
    return _merge([(min(a, b), max(a, b)) for a, b in pairs])


@st.composite
def rules(draw: st.DrawFn, prefixes: Mapping[int, Sequence[Prefix]] | None = None,
          set_names: Sequence[str] = (), ifaces: Sequence[str] = (), ports: Sequence[int] = ()) -> Rule:
    """A valid Rule (what parse_rule can return). With pools given, the
    fields come from them (so that random packets hit them often)."""
    family = draw(st.sampled_from([0, 4, 6]))

    sparse = prefixes is not None  # pooled rules constrain fewer fields, so packets match them more often

    def often(odds: int = 2) -> bool:  # true once in ``odds`` draws when sparse, else half the time
        return draw(st.integers(1, odds if sparse else 2)) == 1

    def side() -> Addr:
        kinds = ["any"] * (3 if sparse else 1) + (["prefix", "set"] if family else ["set"])
        kind = draw(st.sampled_from(kinds))
        if kind == "prefix":
            pool = (prefixes or {}).get(family)
            return Addr(prefix=draw(st.sampled_from(pool) if pool else random_prefix(family)))
        if kind == "set":
            name = draw(st.sampled_from(set_names) if set_names else st.text(_SETCHARS, min_size=1, max_size=31))
            return Addr(set=name)
        return ANY

    src, dst = side(), side()
    protos = ["any", "tcp", "udp", "esp", "gre", "132"] + (["icmp"] if family != 6 else []) + (
        ["icmpv6"] if family != 4 else []) + (["ipv6"] if family == 4 and not src.set and not dst.set else [])
    proto = draw(st.sampled_from(protos)) if often() else "any"
    sport = dport = None
    if proto in ("any", "tcp", "udp"):
        if often(4):
            sport = draw(port_ranges(ports))
        if often(3):
            dport = draw(port_ranges(ports))
    iface = None
    if often(5):
        iface = draw(st.sampled_from(ifaces) if ifaces else st.text(_IFCHARS, min_size=1, max_size=IFNAME_MAX))
    action = draw(st.sampled_from([Action.ALLOW, Action.DENY]))
    return Rule(action, proto, src, sport, dst, dport, iface)


@FAST
@given(rules())
def test_random_rules_format_and_parse_back(rule: Rule) -> None:
    text = str(rule)
    if len(text.encode()) >= RULE_TEXT:
        with pytest.raises(UsageError, match="rule too long"):
            parse_rule(text)
        return
    back = parse_rule(text)
    assert back == rule
    assert str(back) == text


@FAST
@given(rules(), st.randoms(use_true_random=False))
def test_random_rules_in_other_word_orders(rule: Rule, rnd: random.Random) -> None:
    """The clauses of a rule may come in any order (proto last as ufw allows, 'in' anywhere)."""
    text = str(rule)
    assume(len(text.encode()) < RULE_TEXT)
    words = text.split()
    clauses: list[list[str]] = []
    i = 1
    while i < len(words):
        w = words[i]
        take = 4 if w in ("from", "to") and i + 2 < len(words) and words[i + 2] == "port" else 2
        clauses.append(words[i : i + take])
        i += take
    rnd.shuffle(clauses)
    if rnd.random() < 0.5:
        clauses.insert(rnd.randrange(len(clauses) + 1), ["in"])
    shuffled = [words[0]] + [w for c in clauses for w in c]
    assert parse_rule_words(shuffled) == rule


# ---- the compiler against a linear scan ---------------------------------------------------


class Pkt(NamedTuple):
    family: int
    saddr: bytes
    daddr: bytes
    proto: int
    has_ports: bool  # TCP/UDP and not a later fragment
    sport: int
    dport: int
    ifindex: int
    in_sets: tuple[frozenset[str], frozenset[str]]  # the sets holding the source, the destination


def first_match(rules_: Sequence[Rule], pkt: Pkt, ifindexes: Mapping[str, Sequence[int]]) -> Optional[int]:
    """The plain meaning: the index of the first rule the packet matches."""

    def addr_ok(a: Addr, addr: bytes, d: int) -> bool:
        if a.prefix is not None:
            return a.prefix.family == pkt.family and a.prefix.holds(addr)
        if a.set is not None:
            return a.set in pkt.in_sets[d]
        return True

    def port_ok(ranges: Optional[tuple[tuple[int, int], ...]], port: int) -> bool:
        return ranges is None or (pkt.has_ports and any(lo <= port <= hi for lo, hi in ranges))

    for i, r in enumerate(rules_):
        if (
            (r.proto == "any" or proto_number(r.proto) == pkt.proto)
            and not (r.proto == "ipv6" and pkt.family == 6)
            and addr_ok(r.src, pkt.saddr, 0)
            and addr_ok(r.dst, pkt.daddr, 1)
            and port_ok(r.sport, pkt.sport)
            and port_ok(r.dport, pkt.dport)
            and (r.iface is None or pkt.ifindex in ifindexes.get(r.iface, ()))
        ):
            return i
    return None


def datapath(t: Tables, pkt: Pkt, set_ids: Mapping[str, int]) -> Optional[int]:
    """match_rules in bpf/xdp_filter.bpf.c, step by step, over the Tables."""
    f, everyone = t.fields, t.all_cls
    name_of = {sid: name for name, sid in set_ids.items()}
    pc = PROTO_CLASS.index(pkt.proto) if pkt.proto in PROTO_CLASS[:4] else 4
    c_proto = t.proto_cls[pc] if f & RuleField.PROTO else everyone
    if f & RuleField.PROTO and f & RuleField.PROTO_NUM and pc == 4:
        c_proto = t.proto_cls[5] + pkt.proto

    def lit_class(d: int) -> int:
        addr = pkt.daddr if d else pkt.saddr
        flag = ((RuleField.LIT4_SRC, RuleField.LIT6_SRC), (RuleField.LIT4_DST, RuleField.LIT6_DST))[d]
        if f & flag[pkt.family == 6]:
            table = t.lit[(d, pkt.family)]
            held = [p for p in table if p.family == pkt.family and p.holds(addr)]  # the LPM trie lookup
            if held:
                return table[max(held, key=lambda p: p.plen)]
        return t.lit_dflt[d * 2 + (pkt.family == 6)]

    def set_class(d: int) -> int:
        mask = 0
        for i, sid in enumerate(t.set_ids[d][:RULE_SETS]):
            if name_of[sid] in pkt.in_sets[d]:
                mask |= 1 << i
        return t.setb[d] + mask

    def port_class(d: int) -> int:
        if not pkt.has_ports:
            return t.noport[d]
        return t.ports[d][pkt.dport if d else pkt.sport]

    classes = [
        c_proto,
        lit_class(0),
        set_class(0) if f & RuleField.SSET else everyone,
        lit_class(1),
        set_class(1) if f & RuleField.DSET else everyone,
        port_class(0) if f & RuleField.SPORT else everyone,
        port_class(1) if f & RuleField.DPORT else everyone,
        t.ifaces.get(pkt.ifindex, t.iface_dflt) if f & RuleField.IFACE else everyone,
    ]
    for c in classes:
        assert c in t.vectors, f"class {c} has no vector: the datapath's lookup would fail"
    w = (1 << (64 * t.n_words)) - 1
    for c in classes:
        w &= t.vectors[c]
    return (w & -w).bit_length() - 1 if w else None


def ip(text: str) -> bytes:
    return inet_pton(AF_INET6 if ":" in text else AF_INET, text)


POOL_PREFIXES = {
    4: [P(t) for t in ("0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.128/25", "10.1.2.3/32",
                       "192.0.2.0/24", "192.0.2.9/32")],
    6: [P(t) for t in ("::/0", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::1/128", "fe80::/10")],
}
POOL_ADDRS = {
    4: [ip(t) for t in ("10.1.2.3", "10.1.2.4", "10.1.2.200", "10.1.3.1", "10.2.0.1", "192.0.2.9", "192.0.2.10",
                        "203.0.113.1")],
    6: [ip(t) for t in ("2001:db8:1::1", "2001:db8:1::2", "2001:db8:2::1", "2001:db9::1", "fe80::1", "::1")],
}
SETS = ["a", "b", "c"]
SET_IDS = {"a": 3, "b": 7, "c": 200}
IFACES = ["eth0", "eth1", "lo"]
IFINDEXES = {"eth0": [2], "eth1": [3, 9]}  # lo: not attached, its rules match nothing
PORT_POOL = [0, 1, 2, 3, 5, 8, 13, 21, 22, 23, 80, 443, 1000, 65534, 65535]
PROTOS = [6, 6, 17, 17, 1, 58, 47, 0, 50, 41, 132, 112]


@st.composite
def packets(draw: st.DrawFn) -> Pkt:
    family = draw(st.sampled_from([4, 6]))
    n = 4 if family == 4 else 16
    addr = st.one_of(st.sampled_from(POOL_ADDRS[family]), st.sampled_from(POOL_ADDRS[family]),
                     st.binary(min_size=n, max_size=n))
    proto = draw(st.sampled_from(PROTOS))
    later_fragment = draw(st.integers(0, 4)) == 0
    members = st.frozensets(st.sampled_from(SETS))
    return Pkt(family, draw(addr), draw(addr), proto, proto in (6, 17) and not later_fragment,
               draw(st.sampled_from(PORT_POOL) | st.sampled_from(PORT_POOL) | st.integers(0, 65535)),
               draw(st.sampled_from(PORT_POOL) | st.sampled_from(PORT_POOL) | st.integers(0, 65535)),
               draw(st.sampled_from([1, 2, 3, 9])), (draw(members), draw(members)))


POOL_RULES = rules(POOL_PREFIXES, SETS, IFACES, PORT_POOL)


@FAST
@given(st.sampled_from([0, 1, 2, 3, 5, 8, 13, 30, 63, 64, 65, 70]).flatmap(
    lambda n: st.lists(POOL_RULES, min_size=n, max_size=n)),
       st.lists(packets(), min_size=1, max_size=40), st.integers(0, 1))
@pytest.mark.long(15)
def test_compiled_tables_find_the_first_matching_rule(rule_list: list[Rule], pkts: list[Pkt], gen: int) -> None:
    cap = 64 if len(rule_list) <= 64 else 128
    t = compile_rules(rule_list, cap, gen, SET_IDS, IFINDEXES)
    per_gen = classes_per_gen(cap)
    assert all(gen * per_gen <= c < (gen + 1) * per_gen for c in t.vectors)
    assert t.n_words == (len(rule_list) + 63) // 64
    for pkt in pkts:
        assert datapath(t, pkt, SET_IDS) == first_match(rule_list, pkt, IFINDEXES), (
            [str(r) for r in rule_list], pkt)


def test_issue_8_the_office_keeps_ssh() -> None:
    """The issue's example: ufw's meaning is the order written."""
    office = ip("192.0.2.77")
    other = ip("198.51.100.1")
    me = ip("203.0.113.1")
    allow_first = [parse_rule("allow proto tcp from 192.0.2.0/24 to any port 22"),
                   parse_rule("deny proto tcp to any port 22")]
    deny_first = [allow_first[1], parse_rule("allow from 192.0.2.0/24")]
    none: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
    for rule_list, src, want in ((allow_first, office, 0), (allow_first, other, 1), (deny_first, office, 0),
                                 (deny_first, other, 0)):
        t = compile_rules(rule_list, 64, 0, {}, {})
        pkt = Pkt(4, src, me, 6, True, 40000, 22, 1, none)
        assert datapath(t, pkt, {}) == first_match(rule_list, pkt, {}) == want
    # udp to 22 and a later fragment: no port rule matches; the address rule still does
    t = compile_rules(deny_first, 64, 0, {}, {})
    assert datapath(t, Pkt(4, office, me, 17, True, 40000, 22, 1, none), {}) == 1
    assert datapath(t, Pkt(4, office, me, 6, False, 0, 0, 1, none), {}) == 1
    assert datapath(t, Pkt(4, other, me, 6, False, 0, 0, 1, none), {}) is None


def test_a_field_no_rule_constrains_is_not_looked_up() -> None:
    t = compile_rules([parse_rule("deny from 10.0.0.0/8")], 64, 0, {}, {})
    assert t.fields == RuleField.LIT4_SRC
    t = compile_rules([parse_rule("deny proto tcp from @a to any port 22 on eth0")], 64, 0, {"a": 1}, {"eth0": [4]})
    assert t.fields == RuleField.PROTO | RuleField.SSET | RuleField.DPORT | RuleField.IFACE
    assert compile_rules([], 64, 0, {}, {}).fields == 0


# ---- class bounds ----------------------------------------------------------------------


def test_more_rules_than_the_capacity_are_refused() -> None:
    rule_list = [parse_rule(f"deny to any port {p}") for p in range(65)]
    compile_rules(rule_list[:64], 64, 0, {}, {})
    with pytest.raises(UsageError, match="65 rules: the state holds at most 64"):
        compile_rules(rule_list, 64, 0, {}, {})


@pytest.mark.parametrize("side", ["from", "to"])
def test_at_most_eight_sets_per_side(side: str) -> None:
    ids = {f"s{i}": i + 1 for i in range(RULE_SETS + 1)}
    rule_list = [parse_rule(f"deny {side} @s{i}") for i in range(RULE_SETS + 1)]
    t = compile_rules(rule_list[:RULE_SETS], 64, 0, ids, {})
    d = 0 if side == "from" else 1
    assert t.set_ids[d] == tuple(range(1, RULE_SETS + 1))
    assert all(t.setb[d] + m in t.vectors for m in range(1 << RULE_SETS))
    where = "source" if side == "from" else "destination"
    with pytest.raises(UsageError, match=f"rules reference {RULE_SETS + 1} {where} sets; at most {RULE_SETS}"):
        compile_rules(rule_list, 64, 0, ids, {})
    # eight on each side at once is fine
    both = [parse_rule(f"deny from @s{i} to @s{(i + 1) % RULE_SETS}") for i in range(RULE_SETS)]
    compile_rules(both, 64, 0, ids, {})


def test_a_rule_naming_an_unknown_set_is_refused() -> None:
    with pytest.raises(UsageError, match="no set @ghost"):
        compile_rules([parse_rule("deny from @ghost")], 64, 0, {}, {})


def test_port_lists_beyond_the_class_budget_are_refused_clearly() -> None:
    """classes_per_gen budgets 6 r + 1,600 classes: about one port range per
    rule and side. 128 rules of 15 ranges each need more distinct vectors;
    the compiler refuses them with a line that says why and what to do
    (before anything is written), rather than overflowing a generation."""
    rnd = random.Random(1)
    rule_list = []
    for _ in range(128):
        ranges = []
        for _ in range(MAX_PORT_RANGES):
            lo = rnd.randrange(1000, 9900)
            ranges.append(f"{lo}:{lo + rnd.randrange(1, 99)}")
        rule_list.append(parse_rule("deny proto tcp to any port " + ",".join(ranges)))
    with pytest.raises(UsageError, match="port ranges.*--rules"):
        compile_rules(rule_list, 128, 0, {}, {})
    compile_rules(rule_list[:20], 128, 0, {}, {})  # a few such rules fit


# ---- the datapath's fast paths (pyxdp/model/fastpath.py) ----------------------------------


def _rules(*texts: str) -> list[Rule]:
    return [parse_rule_words(t.split()) for t in texts]


@pytest.mark.parametrize(("texts", "want"), [
    ((), L.Shape.PORT_RULES),
    (("deny from @banned",), L.Shape.BAN_FIRST | L.Shape.PORT_RULES),
    (("deny from @banned", "allow 22/tcp", "deny 53/udp", "allow proto icmp"), L.Shape.BAN_FIRST | L.Shape.PORT_RULES),
    (("deny from @banned", "allow from 10.0.0.0/8 port 22"), L.Shape.BAN_FIRST),
    (("deny from @banned", "deny from @other"), L.Shape.BAN_FIRST),
    (("allow 22/tcp", "deny from @banned"), L.Shape(0)),
    (("allow from @banned",), L.Shape(0)),
    (("deny proto tcp from @banned",), L.Shape(0)),
    (("deny from @banned port 53",), L.Shape(0)),
    (("deny from @banned on eth0",), L.Shape(0)),
    (("deny from @banned to 10.0.0.1",), L.Shape(0)),
    (("allow 22/tcp", "allow 80,443/tcp", "deny 1000:2000/udp", "deny 53"), L.Shape.PORT_RULES),
    (("allow 22/tcp", "allow to @lan port 80"), L.Shape(0)),
    (("allow 22/tcp", "allow in on eth0 to any port 80"), L.Shape(0)),
])
def test_fast_paths_follow_the_rule_list_form(texts: tuple[str, ...], want: L.Shape) -> None:
    """A leading ban list and port-only rules are the forms the fast paths
    take; the compiler marks a generation's rule set with the same forms."""
    rules = _rules(*texts)
    assert fastpath.fast_paths(rules) == want
    fields = compile_rules(rules, 1024, 0, {"banned": 1, "other": 2, "lan": 3}, {"eth0": [2]}).fields
    assert bool(fields & L.RuleField.BAN_FIRST) == bool(want & L.Shape.BAN_FIRST)
    assert bool(fields & L.RuleField.PORT_RULES) == bool(want & L.Shape.PORT_RULES and rules)  # none: no rule step
