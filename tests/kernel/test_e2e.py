"""Real packets across a veth between two namespaces the test creates: the
filter attached (native and generic) on the receiver's side. Blocked ones do
not arrive, allowed ones do, rules decide in order, bans expire, and the
counters (per reason, per rule, per set element) agree with what was sent.

Datagrams are sent and received by sockets this process opens inside the
namespaces (setns on the calling thread for the socket's creation only), so
no fixed receive window is waited out: receiving stops when the datapath's
counters account for every datagram sent."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from typing import Any

import pytest
from helpers.cli import BIN
from helpers.env import NetPair, needs_root, sh
from helpers.netio import netns
from helpers.traffic import dropped_all_but, exchange, sock

from pyxdp import Filter, Reason, UsageError, Verdict, XdpMode

pytestmark = needs_root

def xdp_of(pair: NetPair, ns: str, dev: str) -> str:
    return sh("ip", "-n", ns, "-d", "link", "show", dev).stdout


@pytest.mark.parametrize("mode", [XdpMode.NATIVE, XdpMode.GENERIC])
def test_ban_drops_unban_lets_through(pin_dir: str, netpair: NetPair, mode: XdpMode) -> None:
    with Filter.open(pin_dir, create=True) as flt:
        a = flt.attach(netpair.vb, mode=mode, netns=netpair.b)
        assert a.mode == mode.value
        assert ("xdpgeneric" if mode is XdpMode.GENERIC else "xdp ") in xdp_of(netpair, netpair.b, netpair.vb)
        assert exchange(netpair, "10.77.0.2", {5000: 10}) == {5000: 10}  # nothing denied yet

        res = flt.ban(["10.77.0.1"])
        assert res.rule == 1 and res.added == 1
        drops = flt.stats().total(Verdict.DROP)
        assert exchange(netpair, "10.77.0.2", {5000: 20}, settled=dropped_all_but(flt, drops, 20)) == {5000: 0}
        assert flt.stats().get(Verdict.DROP, Reason.RULE_DENY).packets == 20
        [el] = flt.set_members("banned")
        assert (str(el.prefix), el.hits, el.expires_in) == ("10.77.0.1/32", 20, None)
        assert [(r.number, str(r.rule), r.packets) for r in flt.rules()] == [(1, "deny from @banned", 20)]
        assert exchange(netpair, "fd77::2", {5000: 5}) == {5000: 5}  # another source: IPv6 not banned

        assert flt.unban(["10.77.0.1"]).removed == 1
        assert exchange(netpair, "10.77.0.2", {5000: 10}) == {5000: 10}
        assert flt.stats().get(Verdict.DROP, Reason.RULE_DENY).packets == 20
        assert flt.detach(netpair.vb, netns=netpair.b) is True  # last interface: state removed
    assert not os.path.exists(pin_dir)
    assert "prog/xdp" not in xdp_of(netpair, netpair.b, netpair.vb)


def test_ordered_rules_on_the_wire_and_counters(pin_dir: str, netpair: NetPair) -> None:
    """The office-lockout example with UDP: the office's allow comes first."""
    with Filter.open(pin_dir, create=True) as flt:
        flt.attach(netpair.vb, netns=netpair.b)
        assert flt.allow("proto udp from 10.77.0.0/24 to any port 5000") == 1
        assert flt.deny("proto udp to any port 5000") == 2
        assert flt.deny("5001/udp") == 3
        assert flt.deny("from fd77::/64 to any port 5002") == 4
        assert exchange(netpair, "10.77.0.2", {5000: 7, 5001: 5, 5002: 4},
                        settled=dropped_all_but(flt, 0, 16)) == {5000: 7, 5001: 0, 5002: 4}
        assert exchange(netpair, "fd77::2", {5000: 3, 5002: 6},
                        settled=dropped_all_but(flt, 5, 9)) == {5000: 0, 5002: 0}
        assert [(r.number, r.packets) for r in flt.rules()] == [(1, 7), (2, 3), (3, 5), (4, 6)]
        assert all(r.bytes > 0 for r in flt.rules())
        stats = flt.stats()
        assert stats.get(Verdict.PASS, Reason.RULE_ALLOW).packets == 7
        assert stats.get(Verdict.DROP, Reason.RULE_DENY).packets == 14
        assert stats.get(Verdict.PASS, Reason.POLICY).packets >= 4  # 10.77.0.1 -> 5002 (and more: ND, etc.)
        assert stats.get(Verdict.PASS, Reason.ARP).packets >= 1
        assert stats.get(Verdict.PASS, Reason.ND).packets >= 1

        # the other order: the deny first locks the office out, as ufw would
        flt.replace_rules(["deny proto udp to any port 5000", "allow proto udp from 10.77.0.0/24 to any port 5000"])
        drops = flt.stats().total(Verdict.DROP)
        assert exchange(netpair, "10.77.0.2", {5000: 4}, settled=dropped_all_but(flt, drops, 4)) == {5000: 0}
        assert [r.packets for r in flt.rules()] == [3 + 4, 7]  # a rule kept by replace keeps its counter

        # an allowlist: drop policy, one port open; ARP and ND keep working
        flt.replace_rules(["allow 5001/udp"])
        flt.set_policy(Verdict.DROP)
        sh("ip", "-n", netpair.a, "neigh", "flush", "all", check=False)
        drops = flt.stats().total(Verdict.DROP)
        assert exchange(netpair, "10.77.0.2", {5000: 6, 5001: 6},
                        settled=dropped_all_but(flt, drops, 12)) == {5000: 0, 5001: 6}
        sh("ip", "-n", netpair.a, "-6", "neigh", "flush", "all", check=False)
        drops = flt.stats().total(Verdict.DROP)
        assert exchange(netpair, "fd77::2", {5000: 6, 5001: 6},
                        settled=dropped_all_but(flt, drops, 12)) == {5000: 0, 5001: 6}
        assert flt.stats().get(Verdict.DROP, Reason.POLICY).packets >= 12
        flt.detach(netpair.vb, netns=netpair.b)


def test_ban_with_ttl_expires_by_itself(pin_dir: str, netpair: NetPair) -> None:
    with Filter.open(pin_dir, create=True) as flt:
        flt.attach(netpair.vb, netns=netpair.b)
        flt.ban(["10.77.0.0/24"], ttl=1)
        t0 = time.monotonic()
        assert exchange(netpair, "10.77.0.2", {5000: 5}, settled=dropped_all_but(flt, 0, 5)) == {5000: 0}
        assert flt.set_members("banned")[0].hits == 5
        time.sleep(max(0.0, 1.15 - (time.monotonic() - t0)))
        assert exchange(netpair, "10.77.0.2", {5000: 5}) == {5000: 5}  # expired: matches no more
        assert flt.stats().get(Verdict.DROP, Reason.RULE_DENY).packets == 5
        # the kernel's sweeper (every 1 s) takes it out of memory without any command
        for _ in range(40):
            if not flt.set_members("banned"):
                break
            time.sleep(0.1)
        assert flt.set_members("banned") == []
        assert [str(r.rule) for r in flt.rules()] == ["deny from @banned"]
        flt.detach(netpair.vb, netns=netpair.b)


def test_atomic_reload_while_traffic_flows(pin_dir: str, netpair: NetPair) -> None:
    """Two reloads while datagrams flow: every denied one is dropped, every
    allowed one arrives (no gap with no program, no moment without rules)."""
    with Filter.open(pin_dir, create=True) as flt:
        first = flt.attach(netpair.vb, netns=netpair.b)
        flt.deny("5001/udp")
    exchange(netpair, "10.77.0.2", {5002: 1})  # neighbour resolved before the count starts
    rx = {p: sock(netpair.b, 4, p) for p in (5000, 5001)}
    tx = sock(netpair.a, 4)
    sent = 0
    stop = threading.Event()

    def flow() -> None:
        nonlocal sent
        while not stop.is_set() or sent < 200:
            for p in (5000, 5001):
                tx.sendto(b"x", ("10.77.0.2", p))
            sent += 1
            time.sleep(0.0005)

    got = dict.fromkeys(rx, 0)

    def drain() -> None:
        for p, s in rx.items():
            try:
                while s.recv(64):
                    got[p] += 1
            except BlockingIOError:
                pass

    try:
        th = threading.Thread(target=flow)
        th.start()
        ids = set()
        try:
            for _ in range(2):
                proc = subprocess.Popen([BIN, "--pin-dir", pin_dir, "attach", netpair.vb, "--netns", netpair.b,
                                         "--reload"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                while proc.poll() is None:
                    drain()
                    time.sleep(0.002)
                out, err = proc.communicate()
                assert proc.returncode == 0, err
                ids.add(int(out.rsplit("program id ", 1)[1]))
        finally:
            stop.set()
            th.join()
        assert first.prog_id not in ids and len(ids) == 2
        deadline = time.monotonic() + 3
        while got[5000] < sent and time.monotonic() < deadline:
            drain()
            time.sleep(0.005)
        assert sent >= 200
        assert got == {5000: sent, 5001: 0}
    finally:
        tx.close()
        for s in rx.values():
            s.close()
    with Filter.open(pin_dir) as flt:
        [rule] = flt.rules()
        assert rule.packets == sent  # hit counters live in the maps: they survive a reload
        [a] = flt.interfaces()
        assert a.attached and a.prog_id in ids
        flt.detach(netpair.vb, netns=netpair.b)


def test_foreign_program_is_not_replaced_without_force(pin_dir: str, netpair: NetPair) -> None:
    from pyxdp.errors import AttachError, UsageError
    from pyxdp.kernel.anyobject import load_object, unload

    obj = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "packets.bpf.o")
    foreign, _mode = load_object(obj, netpair.vb, netns=netpair.b)
    r = subprocess.run([BIN, "--pin-dir", pin_dir, "attach", netpair.vb, "--netns", netpair.b],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not this pyxdp filter; --force" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not os.path.exists(pin_dir)  # the failed attach made the state: gone again
    with Filter.open(pin_dir, create=True) as flt:
        with pytest.raises(AttachError, match="not this pyxdp filter; --force"):
            flt.attach(netpair.vb, netns=netpair.b)
        assert f"prog/xdp id {foreign}" in xdp_of(netpair, netpair.b, netpair.vb)
        a = flt.attach(netpair.vb, netns=netpair.b, force=True)
        assert a.prog_id != foreign
        with pytest.raises(UsageError, match="pyxdp filter"):
            unload(netpair.vb, netns=netpair.b)
        flt.detach(netpair.vb, netns=netpair.b)
    assert load_object(obj, netpair.vb, netns=netpair.b)[0] > 0
    unload(netpair.vb, netns=netpair.b)


def test_rule_on_an_interface(pin_dir: str, netpair: NetPair) -> None:
    with Filter.open(pin_dir, create=True) as flt:
        flt.attach(netpair.vb, netns=netpair.b)
        assert flt.deny("proto udp to any port 5000 on vb") == 1
        assert flt.deny("proto udp to any port 5001 on nosuch0") == 2
        drops = flt.stats().total(Verdict.DROP)
        assert exchange(netpair, "10.77.0.2", {5000: 5, 5001: 5},
                        settled=dropped_all_but(flt, drops, 10)) == {5000: 0, 5001: 5}
        assert [r.packets for r in flt.rules()] == [5, 0]
        assert flt.detach(netpair.vb, netns=netpair.b, keep=True) is False
        flt.attach(netpair.vb, netns=netpair.b)  # attached again (maybe a new ifindex): the rule follows the name
        drops = flt.stats().total(Verdict.DROP)
        assert exchange(netpair, "10.77.0.2", {5000: 3}, settled=dropped_all_but(flt, drops, 3)) == {5000: 0}
        assert flt.detach(netpair.vb, netns=netpair.b) is True
    assert not os.path.exists(pin_dir)


def test_rule_on_an_interface_is_refused_where_ifindexes_collide(pin_dir: str, netpair: NetPair) -> None:
    """One state on both ends of the veth, each in its own namespace (where
    both have ifindex 2): XDP tells interfaces apart only by ifindex, so
    'on vb' would also match va. It is refused, both ways round, instead of
    silently matching the wrong interface."""
    with Filter.open(pin_dir, create=True) as flt:
        flt.attach(netpair.vb, netns=netpair.b)
        flt.attach(netpair.va, netns=netpair.a)
        idx = {a.ifname: a.ifindex for a in flt.interfaces()}
        if idx[netpair.va] != idx[netpair.vb]:
            pytest.skip("the two ends did not get the same ifindex here")
        with pytest.raises(UsageError, match="ambiguous"):
            flt.deny("proto udp to any port 5000 on vb")
        assert flt.rules() == []
        flt.detach(netpair.va, netns=netpair.a)
        flt.deny("proto udp to any port 5000 on vb")  # no collision now
        with pytest.raises(UsageError, match="ambiguous"):
            flt.attach(netpair.va, netns=netpair.a)
        assert [a.ifname for a in flt.interfaces()] == [netpair.vb]
        flt.detach(netpair.vb, netns=netpair.b)


def test_one_state_many_interfaces_detach_and_keep(pin_dir: str, netpair: NetPair) -> None:
    with Filter.open(pin_dir, create=True) as flt:
        flt.ban(["10.77.0.1"])
        first = flt.attach(netpair.vb, netns=netpair.b)
        second = flt.attach(netpair.va, netns=netpair.a)  # same maps, other interface
        assert first.prog_id == second.prog_id
        assert len(flt.interfaces()) == 2
        # rules survive detach + attach of one interface
        assert flt.detach(netpair.vb, netns=netpair.b) is False
        assert os.path.exists(pin_dir)
        flt.attach(netpair.vb, netns=netpair.b)
        assert [str(r.rule) for r in flt.rules()] == ["deny from @banned"]
        assert exchange(netpair, "10.77.0.2", {5000: 5}, settled=dropped_all_but(flt, 0, 5)) == {5000: 0}
        flt.detach(netpair.va, netns=netpair.a)
        assert flt.detach(netpair.vb, netns=netpair.b, keep=True) is False
        assert os.path.exists(pin_dir) and flt.interfaces() == []
    with Filter.open(pin_dir) as flt:  # kept: attach again and the ban still holds
        flt.attach(netpair.vb, netns=netpair.b)
        assert exchange(netpair, "10.77.0.2", {5000: 3}, settled=dropped_all_but(flt, 5, 3)) == {5000: 0}
        assert flt.detach(netpair.vb, netns=netpair.b) is True
    assert not os.path.exists(pin_dir)
    assert "prog/xdp" not in xdp_of(netpair, netpair.b, netpair.vb)
    assert "prog/xdp" not in xdp_of(netpair, netpair.a, netpair.va)


def test_trace_events_from_real_traffic(pin_dir: str, netpair: NetPair) -> None:
    with Filter.open(pin_dir, create=True) as flt:
        flt.attach(netpair.vb, netns=netpair.b, mode=XdpMode.GENERIC)
        flt.deny("5002/udp")
        got: list[Any] = []
        with flt.trace() as tr:
            exchange(netpair, "10.77.0.2", {5002: 3}, settled=dropped_all_but(flt, 0, 3))
            for _ in range(10):
                got += [e for e in tr.poll(100) if e.proto == 17]
                if len(got) >= 3:
                    break
            assert tr.lost == 0
        assert flt.config().trace_every == 0  # tracing is off again
        assert len(got) == 3
        ev = got[0].to_dict()
        assert (ev["verdict"], ev["reason"], ev["src"], ev["dst"], ev["proto"], ev["dport"], ev["rule"]) == (
            "drop", "rule-deny", "10.77.0.1", "10.77.0.2", "udp", 5002, 1)
        flt.detach(netpair.vb, netns=netpair.b)


def test_vlan_and_stacked_vlan_on_the_wire(pin_dir: str, netpair: NetPair) -> None:
    """Tagged frames sent raw (AF_PACKET) across the veth: the filter on the
    receiving side parses one 802.1Q tag, and 802.1ad over 802.1Q; the set's
    element hit counters count them."""
    from helpers import packets as P

    frames = [
        P.eth(P.ETH_IP, P.ipv4("10.78.0.1", "10.77.0.2", P.UDP, P.udp(1, 5000)), ((P.VLAN_Q, 100),)),
        P.eth(P.ETH_IP, P.ipv4("10.79.0.1", "10.77.0.2", P.UDP, P.udp(1, 5000)),
              ((P.VLAN_AD, 200), (P.VLAN_Q, 300))),
    ]
    with Filter.open(pin_dir, create=True) as flt:
        flt.attach(netpair.vb, netns=netpair.b)
        flt.set_add("bad", ["10.78.0.1", "10.79.0.0/16", "10.80.0.0/16"])
        flt.deny("from @bad")
        with netns(netpair.a):
            raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        try:
            raw.bind((netpair.va, 0))
            for frame in frames:
                for _ in range(5):
                    raw.send(frame)
        finally:
            raw.close()
        for _ in range(100):
            if flt.stats().get(Verdict.DROP, Reason.RULE_DENY).packets >= 10:
                break
            time.sleep(0.01)
        got = {str(e.prefix): e.hits for e in flt.set_members("bad")}
        assert got == {"10.78.0.1/32": 5, "10.79.0.0/16": 5, "10.80.0.0/16": 0}
        assert flt.stats().get(Verdict.DROP, Reason.RULE_DENY).packets == 10
        assert flt.rules()[0].packets == 10
        flt.detach(netpair.vb, netns=netpair.b)
