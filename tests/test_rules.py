"""Ordered rules and sets: the grammar and file format (no root), then the
kernel: edits, hit counters, sets, atomic swaps under traffic, capacity, and
rules bound to an interface on real packets."""

from __future__ import annotations

import threading
from typing import Any

import packets as P
import pytest
from conftest import ROOT, NetPair, needs_root

from pyxdp import Reason, Verdict
from pyxdp.entries import parse_prefix
from pyxdp.errors import UsageError
from pyxdp.rules import MAX_RULES, compile_rules, format_ruleset, parse_rule, parse_ruleset
from pyxdp.ruleset import RuleSetSpec

# ---- grammar (no root) -----------------------------------------------------------


@pytest.mark.parametrize("text", [
    "allow proto tcp from 192.168.0.0/16 to any port 22",
    "deny proto tcp to any port 22",
    "deny proto udp from 10.0.0.0/8 to any port 53",
    "allow from @office port 1000:2000 to 2001:db8::/32 port 443 on eth1",
    "deny proto icmpv6 from 2001:db8::1/128",
    "deny",
])
def test_canonical_text_round_trips(text: str) -> None:
    rule = parse_rule(text)
    assert str(rule) == text
    assert parse_rule(str(rule)) == rule


@pytest.mark.parametrize("text,says", [
    ("permit from any", "starts with allow or deny"),
    ("allow proto gre", "bad protocol 'gre'"),
    ("allow proto icmp to any port 22", "ports need proto tcp, udp or any"),
    ("allow from 10.0.0.0/8 to 2001:db8::/32", "different families"),
    ("allow proto icmpv6 from 10.0.0.0/8", "does not go with IPv4"),
    ("allow to any port 2000:1000", "the low port comes first"),
    ("allow to any port 70000", "bad port '70000'"),
    ("allow from 10.0.0.1/8", "host bits set"),
    ("allow from @no.such", "bad set name"),
    ("allow from any from any", "given twice"),
    ("allow port 22", "'port' goes after"),
    ("allow on", "expected an interface after 'on'"),
    ('allow on a"b', "bad interface name"),
])
def test_bad_rules_are_refused(text: str, says: str) -> None:
    with pytest.raises(UsageError, match=None) as exc:
        parse_rule(text)
    assert says in str(exc.value)


def test_compiled_classes_are_consecutive_for_set_masks() -> None:
    rules = [parse_rule("deny from @a"), parse_rule("allow from @b to @a"), parse_rule("deny to any port 1:3")]
    t = compile_rules(rules, 1024, 1, {"a": 7, "b": 9}, {})
    assert t.set_ids == ((7, 9), (7,))
    for d, n in ((0, 2), (1, 1)):
        for mask in range(1 << n):
            assert t.setb[d] + mask in t.vectors
    assert all(1 * (6 * 1024 + 1600) <= c < 2 * (6 * 1024 + 1600) for c in t.vectors)  # generation 1's range
    ports = t.ports[1]
    assert ports[0] == ports[4] != ports[1] == ports[3]


def test_ruleset_file_round_trips_and_names_bad_lines() -> None:
    rules = [parse_rule("allow proto tcp from @office to any port 22"), parse_rule("deny proto tcp to any port 22")]
    sets = {"office": [parse_prefix("192.168.0.0/16"), parse_prefix("2001:db8::/48")]}
    text = format_ruleset(rules, sets, "drop")
    assert parse_ruleset(text) == (rules, sets, "drop")
    bad = text.replace("port 22\",\n]", "port 99999\",\n]")
    with pytest.raises(UsageError, match=r"f.toml line 6: bad port '99999'"):
        parse_ruleset(bad, "f.toml")
    with pytest.raises(UsageError, match=r"line 11: set office: bad address"):
        parse_ruleset(text.replace("192.168.0.0/16", "192.168.0.0.0"), "f.toml")
    with pytest.raises(UsageError, match="does not define"):
        parse_ruleset(text.replace("[sets]", "[sets]\n").replace("office = [", "other = ["), "f.toml")
    with pytest.raises(UsageError, match="at line"):
        parse_ruleset("policy = \"drop\"\nrules = [\n  \"deny\"\n  \"allow\"\n]\n", "f.toml")
    with pytest.raises(UsageError, match="bad set name '@foo'"):
        parse_ruleset('[sets]\n"@foo" = ["10.0.0.0/8"]\n', "f.toml")
    with pytest.raises(UsageError, match="policy must be"):
        parse_ruleset('policy = "maybe"\n', "f.toml")


# ---- in the kernel -------------------------------------------------------------------

kernel = pytest.mark.skipif(not ROOT, reason="needs root")


def verdicts(tester: Any, pkts: list[bytes]) -> list[tuple[Verdict, Reason, int]]:
    out = []
    for pkt in pkts:
        r = tester.run(pkt)
        out.append((r.verdict, r.reason, r.event.rule if r.event else 0))
    return out


@needs_root
def test_edit_rules_in_order_with_hits(flt: Any, tester: Any) -> None:
    flt.add_rule("deny proto tcp to any port 22")
    flt.add_rule("allow proto tcp from 192.168.0.0/16 to any port 22", 1)  # the exception goes first
    flt.add_rule("deny proto udp from 10.0.0.0/8 to any port 53")
    with pytest.raises(UsageError, match="rule exists"):
        flt.add_rule("deny proto tcp to any port 22")
    pkts = [P.tcp4("192.168.1.1", 22), P.tcp4("1.2.3.4", 22), P.udp4("10.1.1.1", 53), P.udp4("11.1.1.1", 53)]
    assert verdicts(tester, pkts) == [
        (Verdict.PASS, Reason.RULE_ALLOW, 1),
        (Verdict.DROP, Reason.RULE_DENY, 2),
        (Verdict.DROP, Reason.RULE_DENY, 3),
        (Verdict.PASS, Reason.POLICY, 0),
    ]
    # the tester leaves live counters alone; the attached program counts (test_e2e); here the ids stay put
    ids = [r.id for r in flt.rules()]
    flt.delete_rules([1])
    assert [r.id for r in flt.rules()] == ids[1:]
    assert verdicts(tester, pkts[:1]) == [(Verdict.DROP, Reason.RULE_DENY, 1)]
    flt.delete_rules(["deny proto tcp to any port 22"])
    with pytest.raises(UsageError, match="no rule number 5"):
        flt.delete_rules([1, 5])
    assert len(flt.rules()) == 1  # all or nothing
    # entries come first: a source entry overrides every rule
    flt.deny("11.1.1.1")
    flt.add_rule("allow from 11.1.1.1")
    assert verdicts(tester, [P.udp4("11.1.1.1", 53)]) == [(Verdict.DROP, Reason.SRC_DENY, 0)]


@needs_root
def test_sets_change_in_bulk_and_in_place(flt: Any, tester: Any) -> None:
    flt.set_add("bad", ["203.0.113.0/24", "2001:db8:bad::/48"])
    flt.add_rule("deny from @bad")
    flt.add_rule("allow proto udp to @bad port 53")  # a destination set
    pkts = [P.udp4("203.0.113.9", 80), P.udp6("2001:db8:bad::9", 80), P.udp4("198.51.100.1", 80),
            P.udp4("198.51.100.1", 53, dst="203.0.113.1")]
    assert [v[1:] for v in verdicts(tester, pkts)] == [
        (Reason.RULE_DENY, 1), (Reason.RULE_DENY, 1), (Reason.POLICY, 0), (Reason.RULE_ALLOW, 2)]
    assert flt.set_add("bad", [parse_prefix(f"198.51.{100 + (i >> 8)}.{i & 255}") for i in range(20000)]) == 20000
    assert verdicts(tester, pkts[2:3])[0][1:] == (Reason.RULE_DENY, 1)
    flt.set_remove("bad", ["203.0.113.0/24"])
    assert verdicts(tester, pkts[:1])[0][1:] == (Reason.POLICY, 0)
    with pytest.raises(UsageError, match="not in set @bad"):
        flt.set_remove("bad", ["2001:db8:bad::/48", "192.0.2.0/24"])
    assert {(s.name, s.n4, s.n6) for s in flt.sets()} == {("bad", 20000, 1)}
    with pytest.raises(UsageError, match="used by a rule"):
        flt.set_destroy("bad")
    with pytest.raises(UsageError, match="no set @other"):
        flt.add_rule("deny from @other")
    flt.replace_rules([])
    flt.set_destroy("bad")
    assert flt.sets() == [] and flt.map("set4").lookup(b"\0" * 12) is None


@needs_root
def test_apply_replaces_everything_and_save_is_its_inverse(flt: Any, tester: Any) -> None:
    flt.set_add("old", ["192.0.2.0/24"])
    flt.add_rule("deny from @old")
    text = format_ruleset([parse_rule("allow proto tcp from @office to any port 22"),
                           parse_rule("deny proto tcp to any port 22")],
                          {"office": [parse_prefix("10.0.0.0/8")]}, "pass")
    rules, sets, policy = parse_ruleset(text)
    flt.apply(RuleSetSpec(tuple(rules), sets, Verdict.PASS))
    assert [s.name for s in flt.sets()] == ["office"]
    assert verdicts(tester, [P.tcp4("10.0.0.1", 22), P.tcp4("192.0.2.1", 22)]) == [
        (Verdict.PASS, Reason.RULE_ALLOW, 1), (Verdict.DROP, Reason.RULE_DENY, 2)]
    spec = flt.ruleset()
    assert format_ruleset(spec.rules, spec.sets, spec.policy.label) == text
    # a rule set that cannot be installed (9 source sets) changes nothing
    many = {f"s{i}": [parse_prefix(f"10.{i}.0.0/16")] for i in range(9)}
    with pytest.raises(UsageError, match="at most 8"):
        flt.apply(RuleSetSpec(tuple(parse_rule(f"deny from @s{i}") for i in range(9)), many, None))
    after = flt.ruleset()
    assert format_ruleset(after.rules, after.sets, after.policy.label) == text
    assert sum(1 for _ in flt.map("set4")) == 1  # the new sets' prefixes were taken back


@needs_root
def test_no_packet_sees_a_half_applied_rule_set(flt: Any) -> None:
    """Two rule sets of 300 rules that order the same rules oppositely and
    flip every action: a packet matches one rule, which is number k and
    allows in A, number 301 - k and denies in B. Packets run through the
    program on another CPU while the rule set is swapped 30 times; each must
    get A's answer or B's, never anything else (a mix of the two
    generations' vectors would select another rule, or none)."""
    n = 300
    base = [f"proto udp from 10.{9 + i // 256}.{i % 256}.0/24 to any port {1000 + i}" for i in range(n)]
    rule_a = [parse_rule(f"{'allow' if i % 2 else 'deny'} {w}") for i, w in enumerate(base)]
    rule_b = [parse_rule(f"{'deny' if i % 2 else 'allow'} {w}") for i, w in enumerate(base)][::-1]
    flt.replace_rules(rule_a)
    probes = [(i, P.udp4(f"10.{9 + i // 256}.{i % 256}.7", 1000 + i)) for i in range(0, n, 7)]
    want_a = {i: (Verdict.PASS if i % 2 else Verdict.DROP, i + 1) for i, _ in probes}
    want_b = {i: (Verdict.DROP if i % 2 else Verdict.PASS, n - i) for i, _ in probes}
    seen = {"a": 0, "b": 0}
    bad: list[Any] = []
    stop = threading.Event()

    def traffic() -> None:
        with flt.tester() as t:
            while not stop.is_set():
                for i, pkt in probes:
                    r = t.run(pkt)
                    got = (r.verdict, r.event.rule if r.event else 0)
                    if got == want_a[i]:
                        seen["a"] += 1
                    elif got == want_b[i]:
                        seen["b"] += 1
                    else:
                        bad.append((i, got, r.reason))

    th = threading.Thread(target=traffic)
    th.start()
    try:
        for k in range(30):
            flt.replace_rules(rule_b if k % 2 == 0 else rule_a)
    finally:
        stop.set()
        th.join()
    assert not bad, bad[:5]
    assert seen["a"] > 0 and seen["b"] > 0, seen


@needs_root
def test_maximum_rule_count_matches_the_last_rule(pin_dir: str) -> None:
    from pyxdp import Filter

    with Filter.open(pin_dir, create=True, rules=MAX_RULES) as flt, flt.tester() as t:
        rules = [parse_rule(f"deny proto tcp from 10.{i >> 8}.{i & 255}.0/24 to any port {i + 1}")
                 for i in range(MAX_RULES - 1)] + [parse_rule("allow proto udp to any port 53")]
        flt.replace_rules(rules)
        assert len(flt.rules()) == MAX_RULES
        r = t.run(P.udp4("192.0.2.1", 53))
        assert (r.verdict, r.reason, r.event.rule) == (Verdict.PASS, Reason.RULE_ALLOW, MAX_RULES)
        r = t.run(P.tcp4("10.31.254.1", 8191))
        assert (r.verdict, r.reason, r.event.rule) == (Verdict.DROP, Reason.RULE_DENY, 8191)
        with pytest.raises(UsageError, match="at most 8192"):
            flt.add_rule("deny proto udp to any port 54")


@needs_root
def test_rule_on_an_interface_with_real_packets(pin_dir: str, netpair: NetPair) -> None:
    from test_e2e import exchange

    from pyxdp import Filter, XdpMode

    with Filter.open(pin_dir, create=True) as flt:
        flt.add_rule(f"deny proto udp to any port 5000 on {netpair.vb}")
        flt.add_rule("deny proto udp to any port 5001 on nosuchif")
        flt.attach(netpair.vb, mode=XdpMode.NATIVE, netns=netpair.b)  # the rule's ifindex is filled in now
        assert exchange(netpair, "10.77.0.2", {5000: 10, 5001: 10, 5002: 10}) == {5000: 0, 5001: 10, 5002: 10}
        hits = [r.packets for r in flt.rules()]
        assert hits == [10, 0]
        assert flt.stats().get(Verdict.DROP, Reason.RULE_DENY).packets == 10
