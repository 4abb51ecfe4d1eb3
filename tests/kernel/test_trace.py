"""Trace: filters on decoded events (verdict, source prefix, port, rule),
interface names instead of ifindexes, and the packets' first bytes written as
a pcap that pyxdp's reader and tcpdump read back, tracing real traffic
across a veth. The tests that build events from known packet bytes (no
root): tests/unit/test_trace.py."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from helpers import packets as P
from helpers.env import NetPair, needs_root, tcpdump

from pyxdp import Filter, XdpMode
from pyxdp import layout as L
from pyxdp.model.pcap import read_pcap_records

BIN = os.path.join(os.path.dirname(sys.executable), "pyxdp-load")


# ---- events: head and interface ------------------------------------------------------------------------


# ---- filters --------------------------------------------------------------------------------------------


# ---- pcap -----------------------------------------------------------------------------------------------


# ---- the kernel fills the heads -------------------------------------------------------------------------


@needs_root
def test_replayed_packets_events_carry_their_first_bytes(flt: Any) -> None:
    long = P.eth(P.ETH_IP, P.ipv4("203.0.113.5", "198.51.100.1", P.UDP, P.udp(4444, 6000, b"y" * 400)))
    short = P.tcp6("2001:db8::1", 22)
    with flt.tester() as t:
        for pkt in (short, long):
            ev = t.run(pkt).event
            assert ev is not None and ev.pkt_len == len(pkt)
            assert ev.head == pkt[: L.HEAD_LEN]


# ---- the command line, on real traffic ------------------------------------------------------------------

SENDER = """
import socket, sys, time
targets = [(a, int(p)) for a, p in (t.rsplit(":", 1) for t in sys.argv[1:])]
socks = {4: socket.socket(socket.AF_INET, socket.SOCK_DGRAM), 6: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)}
while True:
    for addr, port in targets:
        try:
            socks[6 if ":" in addr else 4].sendto(b"pyxdp-trace", (addr, port))
        except OSError:
            pass
    time.sleep(0.005)
"""
TARGETS = ("10.77.0.2:5000", "10.77.0.2:5001", "10.77.0.2:5002", "fd77::2:5000", "fd77::2:5001")


@contextmanager
def sending(pair: NetPair) -> Iterator[None]:
    """Datagrams a -> b to every target, round and round, until the block ends."""
    proc = subprocess.Popen(["ip", "netns", "exec", pair.a, sys.executable, "-c", SENDER, *TARGETS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def trace(pin_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYXDP_DEBUG", "PYXDP_PIN_DIR")}
    return subprocess.run([BIN, "--pin-dir", pin_dir, "trace", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def trace_json(pin_dir: str, *args: str) -> list[dict[str, Any]]:
    r = trace(pin_dir, "--json", *args)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return [json.loads(x) for x in r.stdout.splitlines()]


def fails(code: int, says: str, pin_dir: str, *args: str) -> None:
    r = trace(pin_dir, *args)
    assert r.returncode == code, (args, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyxdp-load: error: ") and says in lines[0], r.stderr


@pytest.fixture
def fw(pin_dir: str, netpair: NetPair) -> Iterator[str]:
    """pyxdp on vb (ns b): rule 1 allows udp 5001, rule 2 denies udp 5000, the rest passes."""
    with Filter.open(pin_dir, create=True) as flt:
        flt.attach(netpair.vb, netns=netpair.b, mode=XdpMode.GENERIC)
        flt.allow("5001/udp")
        flt.deny("5000/udp")
    try:
        yield pin_dir
    finally:
        with Filter.open(pin_dir) as flt:
            flt.detach(netpair.vb, netns=netpair.b)


@needs_root
def test_cli_trace_filters_and_interface_names_on_real_traffic(fw: str, netpair: NetPair) -> None:
    vb = f"{netpair.b}/vb"
    with sending(netpair):
        drops = trace_json(fw, "--verdict", "drop", "--count", "6")
        assert len(drops) == 6
        for e in drops:
            assert (e["verdict"], e["reason"], e["rule"], e["proto"], e["dport"]) == ("drop", "rule-deny", 2,
                                                                                       "udp", 5000)
            assert e["interface"] == vb
        assert {e["src"] for e in drops} == {"10.77.0.1", "fd77::1"}  # both families were dropped and traced

        for e in trace_json(fw, "--port", "5001", "--count", "4"):
            assert (e["verdict"], e["reason"], e["rule"], e["dport"]) == ("pass", "rule-allow", 1, 5001)

        v6 = trace_json(fw, "--from", "fd77::/64", "--count", "4")
        assert len(v6) == 4
        assert all(ipaddress.ip_address(e["src"]) in ipaddress.ip_network("fd77::/64") for e in v6)

        for e in trace_json(fw, "--verdict", "pass", "--from", "10.77.0.0/24", "--port", "5000:5002", "--count", "4"):
            assert (e["src"], e["verdict"], e["proto"]) == ("10.77.0.1", "pass", "udp") and e["dport"] in (5001, 5002)

        r = trace(fw, "--rule", "2", "--from", "10.77.0.1", "--count", "3")
        assert r.returncode == 0, r.stderr
        assert "only from 10.77.0.1/32 rule 2" in r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) == 3
        for ln in lines:
            assert ln.startswith(f"drop rule-deny   {vb} udp 10.77.0.1 -> 10.77.0.2 ") and ln.endswith(
                "-> 5000 (rule 2)"), ln


@needs_root
def test_cli_trace_pcap_of_real_traffic_read_by_tcpdump(fw: str, netpair: NetPair, tmp_path: Any) -> None:
    cap = str(tmp_path / "out.pcap")
    with sending(netpair):
        r = trace(fw, "--pcap", cap, "--port", "5000", "--count", "6")
        assert r.returncode == 0, r.stderr
        assert r.stderr.splitlines()[-1] == f"6 packets written to {cap}"
        assert len(r.stdout.splitlines()) == 6  # the lines too
        piped = subprocess.run(f"{BIN} --pin-dir {fw} trace --pcap - --verdict pass --count 3 | tcpdump -r - -nn",
                               shell=True, capture_output=True, text=True, timeout=60)
    with open(cap, "rb") as fh:
        recs = list(read_pcap_records(fh))
    assert len(recs) == 6 and all(r.error is None for r in recs)
    for rec in recs:
        assert rec.data[12:14] in (b"\x08\x00", b"\x86\xdd")  # whole frames from the Ethernet header on
        assert rec.data.endswith(b"pyxdp-trace")  # short datagrams: all of it
    lines = tcpdump(cap)
    assert len(lines) == 6
    for ln in lines:
        assert ("IP 10.77.0.1." in ln and " > 10.77.0.2.5000: UDP, length 11" in ln) or (
            "IP6 fd77::1." in ln and " > fd77::2.5000: UDP, length 11" in ln), ln
    assert piped.returncode == 0, piped.stderr
    got = piped.stdout.splitlines()
    assert len(got) == 3 and all(" > 10.77.0.2.500" in ln or " > fd77::2.500" in ln or "ICMP6" in ln or "ARP" in ln
                                 for ln in got), got


@needs_root
def test_cli_trace_bad_input_is_one_line_exit_2(fw: str, tmp_path: Any) -> None:
    cap = tmp_path / "never.pcap"
    fails(2, "there is no rule 3 (2 rules", fw, "--rule", "3", "--pcap", str(cap))
    assert not cap.exists()  # refused before anything was made
    fails(2, "host bits set", fw, "--from", "10.77.0.1/24")
    fails(2, "bad address", fw, "--from", "nowhere")
    fails(2, "invalid choice: 'maybe'", fw, "--verdict", "maybe")
    fails(2, "bad port '70000'", fw, "--port", "70000")
    fails(2, "not a positive number", fw, "--rule", "0")
    fails(2, "cannot write", fw, "--pcap", str(tmp_path / "no" / "dir.pcap"))
    fails(2, "leave out --json", fw, "--pcap", "-", "--json")
    with Filter.open(fw, lock=False) as flt:
        assert flt.config().trace_every == 0  # no tracing left on by a refused call



# Ctrl-C arrives while a finalizer runs (one object is dropped per poll): its handler runs there
FINALIZER_CTRL_C = """
import os, signal, sys
from pyxdp.cli import main
from pyxdp.observe import Tracer

class Dropped:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler inside this __del__

real = Tracer.poll
def poll(self, timeout_ms=100):
    Dropped()
    return real(self, timeout_ms)
Tracer.poll = poll
sys.exit(main(["--pin-dir", sys.argv[1], "trace"]))
"""


@needs_root
def test_cli_trace_ctrl_c_during_a_finalizer_still_leaves(pin_dir: str) -> None:
    """The handler called sys.exit where the signal landed: in a finalizer (or
    the ring buffer's callback) Python prints that exception and drops it,
    the signals were ignored by then, and trace never left. Now it exits 0
    and turns tracing off."""
    from helpers.cli import ok

    ok("--create", "deny", "from", "192.0.2.1", pin_dir=pin_dir)
    # -P: the installed package, as the CLI runs it (not the source tree in the working directory)
    r = subprocess.run([sys.executable, "-P", "-c", FINALIZER_CTRL_C, pin_dir], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and "Exception ignored" not in r.stderr, r.stderr
    with Filter.open(pin_dir, lock=False) as flt:
        assert flt.config().trace_every == 0
