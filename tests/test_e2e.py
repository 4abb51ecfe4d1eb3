"""Real packets across a veth between two namespaces the test creates: the
filter attached (native and generic) on the receiver's side. Blocked ones do
not arrive, allowed ones do, and the counters agree."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from conftest import NetPair, needs_root, sh

from pyxdp import Filter, Reason, Verdict, XdpMode

pytestmark = needs_root

NETIO = os.path.join(os.path.dirname(__file__), "netio.py")


def exchange(pair: NetPair, dst: str, sends: dict[int, int], family: int = 4) -> dict[int, int]:
    """Send ``sends[port]`` datagrams a -> b; return how many b received per port."""
    sh("ip", "-n", pair.a, "neigh", "flush", "all", check=False)
    rx = subprocess.Popen(
        ["ip", "netns", "exec", pair.b, sys.executable, NETIO, "recv", *map(str, sends), "--family", str(family),
         "--seconds", "1.5"], stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        for port, n in sends.items():
            sh("ip", "netns", "exec", pair.a, sys.executable, NETIO, "send", dst, str(port), str(n))
        out, _ = rx.communicate(timeout=10)
    finally:
        rx.kill()
    return {int(p): int(n) for p, n in (line.split() for line in out.splitlines())}


@pytest.mark.parametrize("mode", [XdpMode.NATIVE, XdpMode.GENERIC])
def test_blocked_do_not_arrive_allowed_do(pin_dir: str, netpair: NetPair, mode: XdpMode) -> None:
    with Filter.open(pin_dir, create=True) as flt:
        a = flt.attach(netpair.vb, mode=mode, netns=netpair.b)
        assert a.mode == mode.value
        st = sh("ip", "-n", netpair.b, "-d", "link", "show", netpair.vb).stdout
        assert ("xdpgeneric" if mode is XdpMode.GENERIC else "xdp ") in st
        assert exchange(netpair, "10.77.0.2", {5000: 10}) == {5000: 10}  # nothing denied yet

        flt.deny("10.77.0.1")
        assert exchange(netpair, "10.77.0.2", {5000: 20}) == {5000: 0}
        assert flt.stats().get(Verdict.DROP, Reason.SRC_DENY).packets == 20
        assert [s.hits for s in flt.entries()] == [20]

        # allowlist: drop policy, one port open; ARP and ND must keep working
        flt.delete([s.target for s in flt.entries()])
        flt.allow("5001/udp")
        flt.set_policy(Verdict.DROP)
        assert exchange(netpair, "10.77.0.2", {5000: 10, 5001: 10}) == {5000: 0, 5001: 10}
        sh("ip", "-n", netpair.a, "-6", "neigh", "flush", "all", check=False)
        assert exchange(netpair, "fd77::2", {5000: 10, 5001: 10}, family=6) == {5000: 0, 5001: 10}
        stats = flt.stats()
        assert stats.get(Verdict.PASS, Reason.PORT_ALLOW).packets == 20
        assert stats.get(Verdict.DROP, Reason.POLICY).packets >= 20
        assert stats.get(Verdict.PASS, Reason.ARP).packets >= 1
        assert stats.get(Verdict.PASS, Reason.ND).packets >= 1

        assert flt.detach(netpair.vb, netns=netpair.b) is True  # last interface: state removed
    assert not os.path.exists(pin_dir)
    assert "prog/xdp" not in sh("ip", "-n", netpair.b, "-d", "link", "show", netpair.vb).stdout


def test_one_state_many_interfaces_and_atomic_reload(pin_dir: str, netpair: NetPair) -> None:
    with Filter.open(pin_dir, create=True) as flt:
        flt.deny("10.77.0.1")
        first = flt.attach(netpair.vb, netns=netpair.b)
        second = flt.attach(netpair.va, netns=netpair.a)  # same maps, other interface
        assert first.prog_id == second.prog_id
        assert len(flt.interfaces()) == 2
        again = flt.attach(netpair.vb, netns=netpair.b, reload=True)  # new program, atomic replace
        assert again.prog_id != first.prog_id
        ifs = {a.ifname: a for a in flt.interfaces()}
        assert ifs["vb"].attached and ifs["vb"].prog_id == again.prog_id
        assert exchange(netpair, "10.77.0.2", {5000: 5}) == {5000: 0}
        # rules survive detach + attach of one interface
        assert flt.detach(netpair.vb, netns=netpair.b) is False
        flt.attach(netpair.vb, netns=netpair.b)
        assert [str(s.target) for s in flt.entries()] == ["10.77.0.1/32"]
        assert exchange(netpair, "10.77.0.2", {5000: 5}) == {5000: 0}
        flt.detach(netpair.va, netns=netpair.a)
        flt.detach(netpair.vb, netns=netpair.b, keep=True)
    assert os.path.exists(pin_dir)


def test_foreign_program_is_not_replaced_without_force(pin_dir: str, netpair: NetPair) -> None:
    from pyxdp.errors import AttachError
    from pyxdp.generic import load_object, unload

    obj = os.path.join(os.path.dirname(__file__), "..", "examples", "packets.bpf.o")
    foreign, _mode = load_object(obj, netpair.vb, netns=netpair.b)
    with Filter.open(pin_dir, create=True) as flt:
        with pytest.raises(AttachError, match="not this pyxdp filter; --force"):
            flt.attach(netpair.vb, netns=netpair.b)
        assert f"prog/xdp id {foreign}" in sh("ip", "-n", netpair.b, "-d", "link", "show", netpair.vb).stdout
        a = flt.attach(netpair.vb, netns=netpair.b, force=True)
        assert a.prog_id != foreign
        from pyxdp.errors import UsageError
        with pytest.raises(UsageError, match="pyxdp filter"):
            unload(netpair.vb, netns=netpair.b)
        flt.detach(netpair.vb, netns=netpair.b)
    assert load_object(obj, netpair.vb, netns=netpair.b)[0] > 0
    unload(netpair.vb, netns=netpair.b)


def test_trace_events_from_real_traffic(pin_dir: str, netpair: NetPair) -> None:
    with Filter.open(pin_dir, create=True) as flt:
        flt.attach(netpair.vb, netns=netpair.b, mode=XdpMode.GENERIC)
        flt.deny("5002/udp")
        got: list[Any] = []
        with flt.trace() as tr:
            exchange(netpair, "10.77.0.2", {5002: 3})
            for _ in range(10):
                got += [e for e in tr.poll(100) if e.proto == 17]
                if len(got) >= 3:
                    break
            assert tr.lost == 0
        assert flt.config().trace_every == 0  # tracing is off again
        assert len(got) == 3
        ev = got[0].to_dict()
        assert (ev["verdict"], ev["reason"], ev["src"], ev["dst"], ev["proto"], ev["dport"]) == (
            "drop", "port-deny", "10.77.0.1", "10.77.0.2", "udp", 5002)
        flt.detach(netpair.vb, netns=netpair.b)


def test_vlan_and_stacked_vlan_on_the_wire(pin_dir: str, netpair: NetPair) -> None:
    """Tagged frames sent raw (AF_PACKET) across the veth: the filter on the
    receiving side parses one 802.1Q tag, and 802.1ad over 802.1Q. (No VLAN
    devices: this kernel has no 8021q module, so the counters tell.)"""
    import packets as P

    frames = {
        "q": P.eth(P.ETH_IP, P.ipv4("10.78.0.1", "10.77.0.2", P.UDP, P.udp(1, 5000)), ((P.VLAN_Q, 100),)),
        "ad+q": P.eth(P.ETH_IP, P.ipv4("10.79.0.1", "10.77.0.2", P.UDP, P.udp(1, 5000)),
                      ((P.VLAN_AD, 200), (P.VLAN_Q, 300))),
    }
    send = ("import socket, sys\n"
            "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
            "s.bind((sys.argv[1], 0))\n"
            "for _ in range(5):\n"
            "    s.send(bytes.fromhex(sys.argv[2]))\n")
    with Filter.open(pin_dir, create=True) as flt:
        flt.attach(netpair.vb, netns=netpair.b)
        flt.deny("10.78.0.1", "10.79.0.1")
        for frame in frames.values():
            sh("ip", "netns", "exec", netpair.a, sys.executable, "-c", send, netpair.va, frame.hex())
        got = {str(s.target): s.hits for s in flt.entries()}
        assert got == {"10.78.0.1/32": 5, "10.79.0.1/32": 5}
        assert flt.stats().get(Verdict.DROP, Reason.SRC_DENY).packets == 10
        flt.detach(netpair.vb, netns=netpair.b)
