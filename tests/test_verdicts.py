"""Verdicts of the kernel program on crafted packets, through
BPF_PROG_TEST_RUN (no interface involved)."""

from __future__ import annotations

import struct
import time
from typing import Any

import packets as P
import pytest
from conftest import needs_root
from model import Rules, decide

from pyxdp import Action, Reason, Verdict
from pyxdp.entries import Port, parse_prefix

pytestmark = needs_root


def check(tester: Any, pkt: bytes, verdict: Verdict, reason: Reason) -> None:
    r = tester.run(pkt)
    assert (r.verdict, r.reason) == (verdict, reason)


def test_empty_filter_passes_everything(tester: Any) -> None:
    check(tester, P.udp4("192.0.2.1"), Verdict.PASS, Reason.POLICY)
    check(tester, P.tcp6("2001:db8::1", 22), Verdict.PASS, Reason.POLICY)


def test_source_prefix_and_longer_exception(flt: Any, tester: Any) -> None:
    flt.deny("203.0.113.0/24")
    flt.allow("203.0.113.7")
    check(tester, P.udp4("203.0.113.5"), Verdict.DROP, Reason.SRC_DENY)
    check(tester, P.udp4("203.0.113.7"), Verdict.PASS, Reason.SRC_ALLOW)
    check(tester, P.udp4("203.0.112.255"), Verdict.PASS, Reason.POLICY)
    r = tester.run(P.udp4("203.0.113.5"))
    assert r.event is not None and r.event.plen == 24 and r.event.src == "203.0.113.5"


def test_ipv6_prefixes(flt: Any, tester: Any) -> None:
    flt.deny("2001:db8::/32")
    flt.allow("2001:db8:1::/48")
    flt.deny("2001:db8:1:2::/64")
    check(tester, P.udp6("2001:db8:5::1"), Verdict.DROP, Reason.SRC_DENY)
    check(tester, P.udp6("2001:db8:1:1::1"), Verdict.PASS, Reason.SRC_ALLOW)
    check(tester, P.udp6("2001:db8:1:2::1"), Verdict.DROP, Reason.SRC_DENY)
    check(tester, P.udp6("2001:db9::1"), Verdict.PASS, Reason.POLICY)


def test_ports_after_prefixes(flt: Any, tester: Any) -> None:
    flt.deny("53/udp")
    flt.allow("22/tcp")
    flt.allow("198.51.100.0/24")
    check(tester, P.udp4("192.0.2.1", 53), Verdict.DROP, Reason.PORT_DENY)
    check(tester, P.tcp4("192.0.2.1", 53), Verdict.PASS, Reason.POLICY)  # tcp/53 is not udp/53
    check(tester, P.udp4("198.51.100.9", 53), Verdict.PASS, Reason.SRC_ALLOW)  # source decides first
    flt.set_policy(Verdict.DROP)
    check(tester, P.tcp4("192.0.2.1", 22), Verdict.PASS, Reason.PORT_ALLOW)
    check(tester, P.tcp4("192.0.2.1", 23), Verdict.DROP, Reason.POLICY)
    check(tester, P.udp6("2001:db8::1", 53), Verdict.DROP, Reason.PORT_DENY)


def test_vlan_and_stacked_vlan(flt: Any, tester: Any) -> None:
    flt.deny("192.0.2.0/24")
    inner = P.ipv4("192.0.2.1", "10.0.0.1", P.UDP, P.udp(1, 53))
    for tags in [((P.VLAN_Q, 10),), ((P.VLAN_AD, 100), (P.VLAN_Q, 10)), ((P.VLAN_Q, 1),) * 4]:
        check(tester, P.eth(P.ETH_IP, inner, tags), Verdict.DROP, Reason.SRC_DENY)
    check(tester, P.eth(P.ETH_IP, inner, ((P.VLAN_Q, 1),) * 5), Verdict.DROP, Reason.TOO_DEEP)
    truncated = P.eth(P.ETH_IP, b"", ((P.VLAN_Q, 1),))[:16]
    check(tester, truncated, Verdict.DROP, Reason.MALFORMED)


def test_ipv4_options_use_ihl(flt: Any, tester: Any) -> None:
    flt.deny("53/udp")
    opts = b"\x01" * 40  # 40 bytes of NOP options: IHL 15
    check(tester, P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.UDP, P.udp(1, 53), options=opts)),
          Verdict.DROP, Reason.PORT_DENY)
    # were the options ignored, the "port" would be read from option bytes
    check(tester, P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.UDP, P.udp(1, 54), options=opts)),
          Verdict.PASS, Reason.POLICY)
    check(tester, P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.UDP, P.udp(1, 53), ihl=4)),
          Verdict.DROP, Reason.MALFORMED)
    check(tester, P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.UDP, P.udp(1, 53), version=6)),
          Verdict.DROP, Reason.MALFORMED)


def test_ipv6_extension_headers(flt: Any, tester: Any) -> None:
    flt.deny("53/udp")
    chain = P.ext_opts(P.ROUTING) + P.ext_opts(P.AH, 1) + P.ext_ah(P.UDP, 4)
    pkt = P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8::2", P.HOPOPTS, chain + P.udp(1, 53)))
    check(tester, pkt, Verdict.DROP, Reason.PORT_DENY)
    deep = b"".join(P.ext_opts(P.DSTOPTS) for _ in range(8)) + P.udp(1, 53)
    check(tester, P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8::2", P.DSTOPTS, deep)),
          Verdict.DROP, Reason.TOO_DEEP)
    cut = P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8::2", P.HOPOPTS, P.ext_opts(P.UDP, 2)[:12]))
    check(tester, cut, Verdict.DROP, Reason.MALFORMED)
    none = P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8::2", P.NONXT, b""))
    check(tester, none, Verdict.PASS, Reason.POLICY)


def test_fragments_never_match_ports_on_later_fragments(flt: Any, tester: Any) -> None:
    flt.deny("53/udp")
    first = P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.UDP, P.udp(1, 53), more_frags=True))
    later = P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.UDP, P.udp(1, 53), frag_off=3))
    check(tester, first, Verdict.DROP, Reason.PORT_DENY)
    check(tester, later, Verdict.PASS, Reason.FRAGMENT)  # the bytes that look like port 53 are payload
    f6_first = P.ext_frag(P.UDP, 0, more=True) + P.udp(1, 53)
    f6_later = P.ext_frag(P.UDP, 5) + P.udp(1, 53)
    check(tester, P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8::2", P.FRAGMENT, f6_first)),
          Verdict.DROP, Reason.PORT_DENY)
    check(tester, P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "2001:db8::2", P.FRAGMENT, f6_later)),
          Verdict.PASS, Reason.FRAGMENT)
    flt.deny("192.0.2.0/24")  # sources still match on later fragments
    check(tester, later, Verdict.DROP, Reason.SRC_DENY)
    flt.set_policy(Verdict.DROP)
    check(tester, P.eth(P.ETH_IP, P.ipv4("198.51.100.1", "10.0.0.1", P.UDP, P.udp(1, 80), frag_off=9)),
          Verdict.DROP, Reason.FRAGMENT)


@pytest.mark.parametrize("cut", [13, 14, 20, 33, 34 + 7, 34 + 19])
def test_truncated_headers(flt: Any, tester: Any, cut: int) -> None:
    pkt = P.tcp4("192.0.2.1", 22)[:cut]
    want = decide(pkt, Rules())
    assert want[1] == Reason.MALFORMED
    check(tester, pkt, *want)


def test_arp_and_nd_survive_drop_policy(flt: Any, tester: Any) -> None:
    flt.set_policy(Verdict.DROP)
    check(tester, P.eth(P.ETH_ARP, P.arp()), Verdict.PASS, Reason.ARP)
    for icmp_type in (133, 134, 135, 136, 137):
        nd = P.eth(P.ETH_IPV6, P.ipv6("fe80::1", "ff02::1", P.ICMPV6, P.icmp(icmp_type), hop=255))
        check(tester, nd, Verdict.PASS, Reason.ND)
        # with a hop limit below 255 it was routed: not neighbour discovery, no exemption
        routed = P.eth(P.ETH_IPV6, P.ipv6("2001:db8::1", "ff02::1", P.ICMPV6, P.icmp(icmp_type), hop=64))
        check(tester, routed, Verdict.DROP, Reason.POLICY)
    echo = P.eth(P.ETH_IPV6, P.ipv6("fe80::1", "ff02::1", P.ICMPV6, P.icmp(128)))
    check(tester, echo, Verdict.DROP, Reason.POLICY)
    check(tester, P.udp4("192.0.2.1"), Verdict.DROP, Reason.POLICY)
    # an IPv4 packet claiming protocol 58 is not neighbour discovery
    fake = P.eth(P.ETH_IP, P.ipv4("192.0.2.1", "10.0.0.1", P.ICMPV6, P.icmp(135)))
    check(tester, fake, Verdict.DROP, Reason.POLICY)


def test_ttl_expiry_falls_back_to_shorter_prefix(flt: Any, tester: Any) -> None:
    flt.deny("198.51.100.0/24")
    flt.allow("198.51.100.7", ttl=1)
    check(tester, P.udp4("198.51.100.7"), Verdict.PASS, Reason.SRC_ALLOW)
    time.sleep(1.1)
    check(tester, P.udp4("198.51.100.7"), Verdict.DROP, Reason.SRC_DENY)
    assert [s.expires_in <= 0 for s in flt.entries() if s.expires_in is not None] == [True]
    assert flt.sweep() == 1
    assert [str(s.target) for s in flt.entries()] == ["198.51.100.0/24"]


def test_expired_entry_written_in_the_past_is_ignored(flt: Any, tester: Any) -> None:
    from pyxdp import layout as L
    from pyxdp.filter import _prefix_key, monotonic_ns

    flt.deny("192.0.2.0/24")
    key = _prefix_key(parse_prefix("192.0.2.0/24"))
    flt.map("src4").update(key, L.ENTRY.pack(monotonic_ns() - 10**9, 0, Action.DENY, 0))
    check(tester, P.udp4("192.0.2.1"), Verdict.PASS, Reason.POLICY)


def test_hits_are_counted_and_test_runs_do_not_count(flt: Any, tester: Any) -> None:
    flt.deny("192.0.2.0/24")
    flt.deny("53/udp")
    for _ in range(3):
        tester.run(P.udp4("192.0.2.1"))
    assert {str(s.target): s.hits for s in flt.entries()} == {"192.0.2.0/24": 0, "53/udp": 0}
    with flt.program() as prog:
        for _ in range(3):
            prog.test_run(P.udp4("192.0.2.1"))
        prog.test_run(P.udp4("10.9.9.9", 53))
    assert {str(s.target): s.hits for s in flt.entries()} == {"192.0.2.0/24": 3, "53/udp": 1}
    st = flt.stats()
    assert st.get(Verdict.DROP, Reason.SRC_DENY).packets == 3
    assert st.get(Verdict.DROP, Reason.PORT_DENY).packets == 1
    assert st.get(Verdict.DROP, Reason.SRC_DENY).bytes == 3 * 60


def test_delete_and_all_or_nothing(flt: Any, tester: Any) -> None:
    from pyxdp.errors import UsageError

    flt.deny("192.0.2.0/24", "198.51.100.0/24")
    with pytest.raises(UsageError, match="no entry for 203.0.113.0/24"):
        flt.delete([parse_prefix("192.0.2.0/24"), parse_prefix("203.0.113.0/24")])
    assert len(flt.entries()) == 2
    with pytest.raises(UsageError, match="is an deny entry, not allow|is a deny entry"):
        flt.delete([parse_prefix("192.0.2.0/24")], Action.ALLOW)
    flt.delete([parse_prefix("192.0.2.0/24")], Action.DENY)
    check(tester, P.udp4("192.0.2.1"), Verdict.PASS, Reason.POLICY)
    assert flt.config().lens4 == (24,)
    flt.delete([parse_prefix("198.51.100.0/24"), Port("udp", 53)] if False else [parse_prefix("198.51.100.0/24")])
    assert flt.config().lens4 == ()


def test_capacity_full_changes_nothing(pin_dir: str) -> None:
    from pyxdp import Filter
    from pyxdp.errors import MapFull

    with Filter.open(pin_dir, create=True, capacity=4) as f:
        f.deny("10.0.0.1", "10.0.0.2")
        with pytest.raises(MapFull, match="full"):
            f.deny("10.0.1.1", "10.0.1.2", "10.0.1.3")
        assert sorted(str(s.target) for s in f.entries()) == ["10.0.0.1/32", "10.0.0.2/32"]
        f.deny("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")  # replacing existing ones fits
        assert len(f.entries()) == 4


def test_bulk_insert_uses_batches(flt: Any, tester: Any) -> None:
    from pyxdp.entries import Entry

    entries = [Entry(parse_prefix(f"10.{i >> 8}.{i & 255}.0/24"), Action.DENY) for i in range(20000)]
    assert flt.add(entries) == 20000
    assert flt.add(entries[:300]) == 300  # re-adding existing ones keeps the count right
    assert sum(1 for _ in flt.map("src4").keys_fast()) == 20000
    check(tester, P.udp4("10.77.32.9"), Verdict.DROP, Reason.SRC_DENY)
    check(tester, P.udp4("11.0.0.1"), Verdict.PASS, Reason.POLICY)
    assert struct.unpack("=Q", flt.map("lens_count").lookup(struct.pack("=I", 24)))[0] == 20000


def test_many_prefix_lengths_use_the_trie_for_the_rare_ones(flt: Any, tester: Any) -> None:
    from pyxdp.entries import Entry

    # ten lengths; /24 and /32 are the populous ones
    nets = [f"10.0.0.0/{n}" for n in (8, 9, 10, 11, 12, 13, 14, 15)]
    flt.add([Entry(parse_prefix(p), Action.ALLOW if i % 2 else Action.DENY) for i, p in enumerate(nets)])
    flt.add([Entry(parse_prefix(f"10.0.{i}.0/24"), Action.DENY) for i in range(50)])
    flt.add([Entry(parse_prefix(f"10.0.{i}.7"), Action.ALLOW) for i in range(40)])
    cfg = flt.config()
    assert cfg.lens4[:2] == (32, 24) and len(cfg.lens4) == 4 and cfg.trie4
    model = Rules(prefixes={s.target: s.action for s in flt.entries()})
    for src in ["10.0.3.7", "10.0.3.8", "10.0.200.1", "10.1.0.1", "10.64.0.1", "10.128.0.1", "11.0.0.1",
                "10.0.49.7", "10.0.45.9", "10.3.0.0", "10.7.255.255"]:
        check(tester, P.udp4(src), *decide(P.udp4(src), model))
    assert len(flt.entries()) == 8 + 50 + 40


def test_rebalance_moves_the_populous_length_into_the_hash(flt: Any, tester: Any) -> None:
    from pyxdp.entries import Entry

    flt.deny("10.0.0.0/8", "10.0.0.0/12", "10.0.0.0/16", "10.0.0.0/20")  # fill the four hash slots
    assert flt.config().lens4 == (20, 16, 12, 8) and not flt.config().trie4
    flt.add([Entry(parse_prefix(f"10.0.{i}.0/24"), Action.ALLOW) for i in range(3)])  # goes to the trie
    assert 24 in flt.config().lens4 and flt.config().trie4  # 3 > 2 * 1: swapped in at once
    assert len([n for n in flt.config().lens4]) == 4
    check(tester, P.udp4("10.0.1.1"), Verdict.PASS, Reason.SRC_ALLOW)
    check(tester, P.udp4("10.0.16.1"), Verdict.DROP, Reason.SRC_DENY)
    check(tester, P.udp4("10.200.0.1"), Verdict.DROP, Reason.SRC_DENY)
    # deleting every /24 frees the slot and the trie length comes back into the hash
    flt.delete([parse_prefix(f"10.0.{i}.0/24") for i in range(3)])
    assert flt.config().lens4 == (20, 16, 12, 8) and not flt.config().trie4
    assert flt.map("lpm4").lookup(_key("10.0.0.0/8")) is None
    check(tester, P.udp4("10.0.1.1"), Verdict.DROP, Reason.SRC_DENY)
    r = tester.run(P.udp4("10.0.1.1"))
    assert r.event is not None and r.event.plen == 20


def _key(prefix: str) -> bytes:
    from pyxdp.filter import _prefix_key

    return _prefix_key(parse_prefix(prefix))


def test_expired_trie_entry_falls_back_to_shorter(flt: Any, tester: Any) -> None:
    from pyxdp import layout as L
    from pyxdp.filter import monotonic_ns

    for n in (8, 10, 12, 14, 16, 18):  # six lengths: two end up in the trie
        flt.deny(f"172.16.0.0/{n}" if n >= 12 else f"172.0.0.0/{n}")
    cfg = flt.config()
    in_trie = [n for n in (8, 10, 12, 14, 16, 18) if n not in cfg.lens4]
    assert len(in_trie) == 2 and cfg.trie4
    longest_trie = max(in_trie)
    prefix = f"172.16.0.0/{longest_trie}" if longest_trie >= 12 else f"172.0.0.0/{longest_trie}"
    flt.allow(prefix)  # replace it with an allow entry ...
    check(tester, P.udp4("172.16.0.1"), *decide(P.udp4("172.16.0.1"), Rules(
        prefixes={s.target: s.action for s in flt.entries()})))
    raw = flt.map("lpm4").lookup(_key(prefix))
    assert raw is not None
    _e, hits, act, plen = L.ENTRY.unpack(raw)
    flt.map("lpm4").update(_key(prefix), L.ENTRY.pack(monotonic_ns() - 10**9, hits, act, plen))  # ... expired
    live = {s.target: s.action for s in flt.entries() if s.expires_in is None}
    for src in ("172.16.0.1", "172.31.0.1", "172.1.0.1", "172.200.0.1"):
        check(tester, P.udp4(src), *decide(P.udp4(src), Rules(prefixes=live)))


def test_ipv6_trie_and_hash_agree_with_the_model(flt: Any, tester: Any) -> None:
    from pyxdp.entries import Entry

    nets = ["2001:db8::/32", "2001:db8::/40", "2001:db8::/48", "2001:db8::/56", "2001:db8::/64",
            "2001:db8::/96", "2001:db8::/120", "2001:db8::1/128", "::/0"]
    flt.add([Entry(parse_prefix(p), Action.DENY if i % 2 else Action.ALLOW) for i, p in enumerate(nets)])
    assert flt.config().trie6 and len(flt.config().lens6) == 4
    model = Rules(prefixes={s.target: s.action for s in flt.entries()})
    for src in ["2001:db8::1", "2001:db8::2", "2001:db8::100", "2001:db8:0:0:1::", "2001:db8:0:1::",
                "2001:db8:0:100::", "2001:db8:1::", "2001:db9::", "fe80::1"]:
        check(tester, P.udp6(src), *decide(P.udp6(src), model))


def test_rare_lengths_stay_in_the_trie_of_a_large_table(flt: Any, tester: Any) -> None:
    from pyxdp.entries import Entry

    flt.add([Entry(parse_prefix(f"10.{i >> 8}.{i & 255}.0/24"), Action.DENY) for i in range(2000)])
    for n in (25, 28, 29, 30, 31):
        flt.add([Entry(parse_prefix(f"192.168.{i}.0/{n}"), Action.ALLOW) for i in range(10)])
    cfg = flt.config()
    assert cfg.lens4 == (24,) and cfg.trie4  # five lengths of 10 entries do not earn a probe each
    assert len(list(flt.map("lpm4").keys_fast())) == 50
    model = Rules(prefixes={s.target: s.action for s in flt.entries()})
    for src in ("10.3.200.1", "10.7.208.1", "192.168.3.1", "192.168.3.200", "192.168.11.1", "8.8.8.8"):
        check(tester, P.udp4(src), *decide(P.udp4(src), model))
    # delete the /24s: the five small lengths no longer compete and, fitting, leave the trie
    flt.delete([parse_prefix(f"10.{i >> 8}.{i & 255}.0/24") for i in range(2000)])
    cfg = flt.config()
    assert len(cfg.lens4) == 4 and cfg.trie4  # five lengths, four slots: one stays in the trie
    check(tester, P.udp4("192.168.3.1"), Verdict.PASS, Reason.SRC_ALLOW)


def test_small_capacity_never_breaks_the_index(pin_dir: str) -> None:
    """Moves between hash and trie that do not fit are skipped, adds that fit
    in the trie are taken, and what is listed is what the datapath sees."""
    from pyxdp import Filter
    from pyxdp.errors import MapFull

    with Filter.open(pin_dir, create=True, capacity=10) as f, f.tester() as t:
        f.deny(*[f"10.0.0.{i}" for i in range(5)])
        f.deny("10.0.1.0/31", "10.0.2.0/30", "10.0.3.0/29")
        f.deny(*[f"192.168.{i}.0/24" for i in range(4)])  # /24 does not fit in the hash: stays in the trie
        listed = [str(s.target) for s in f.entries()]
        assert len(listed) == len(set(listed)) == 12
        with pytest.raises(MapFull):
            f.deny(*[f"172.16.{i}.0/24" for i in range(8)])  # the trie is full: nothing of it lands
        assert len(f.entries()) == 12
        f.delete([parse_prefix("192.168.0.0/24")])
        f.delete([parse_prefix("10.0.0.1")])
        listed = [str(s.target) for s in f.entries()]
        assert "192.168.0.0/24" not in listed and len(listed) == len(set(listed)) == 10
        check(t, P.udp4("192.168.0.9"), Verdict.PASS, Reason.POLICY)  # deleted stays deleted
        check(t, P.udp4("192.168.1.9"), Verdict.DROP, Reason.SRC_DENY)
        check(t, P.udp4("10.0.0.1"), Verdict.PASS, Reason.POLICY)
        check(t, P.udp4("10.0.3.5"), Verdict.DROP, Reason.SRC_DENY)


def test_new_length_goes_to_the_trie_when_the_hash_is_full(pin_dir: str) -> None:
    from pyxdp import Filter

    with Filter.open(pin_dir, create=True, capacity=4) as f:
        f.deny("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
        f.deny("192.168.0.0/24")
        assert f.config().lens4 == (32,) and f.config().trie4
        assert len(f.entries()) == 5


def test_delete_names_each_target_once(flt: Any) -> None:
    flt.deny("192.0.2.1")
    assert flt.delete([parse_prefix("192.0.2.1"), parse_prefix("192.0.2.1")]) == 1
    assert flt.entries() == []
