"""Per-packet cost by packet kind and table size (the benchmarks issue, part 1).
Run as root from the top of the tree after scripts/setup.sh --bench:

    sudo .venv/bin/python benchmarks/matrix.py [--quick]

Programs: the XDP_PASS floor, xdp-filter's xdpfilt_dny_all.o with comparable
entries (exact addresses: the .5 of every IPv4 /24, the ::5 of every IPv6
/48 of the table), and pyxdp with `deny from @banned` (the set holding 1k /
100k / 1M IPv4 /24 prefixes plus a tenth as many IPv6 /48s) and four port
rules. Packets: 64-byte UDP and TCP over
IPv4 and IPv6 and a VLAN-tagged UDP/IPv4, each from a source in the table
and from a far-away one. Medians of interleaved rounds; Markdown to stdout.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from core import FLOOR, PORT_RULES, XdpFilterPeer, median, scratch_pin  # noqa: E402
from helpers import packets as P  # noqa: E402

from pyxdp import Filter, Prefix  # noqa: E402
from pyxdp.kernel.bpf import BpfObject, Program  # noqa: E402
from pyxdp.kernel.libbpf import num_possible_cpus  # noqa: E402

SIZES = {"1k": 1_000, "100k": 100_000, "1M": 1_000_000}


def v4_net(i: int) -> int:
    """The i-th IPv4 /24 of the table: 10.0.0.0/8 first, then 11/8, ... (every /24)."""
    return ((10 << 24) + (i << 8)) & 0xFFFFFFFF


def v6_net(i: int) -> bytes:
    """The i-th IPv6 /48 of the table: 2001:db8:0::/48, 2001:db8:1::/48, ...
    continuing into 2001:db9::/32 after 65,536."""
    return struct.pack("!HHH", 0x2001, 0x0DB8 + (i >> 16), i & 0xFFFF) + bytes(10)


def kinds() -> dict[str, bytes]:
    hit6 = "2001:db8:3::5"  # in 2001:db8:3::/48 (table row 3)
    return {
        "udp4 hit": P.udp4("10.0.3.5", 53),
        "udp4 miss": P.udp4("203.0.113.5", 53),
        "tcp4 miss": P.eth(P.ETH_IP, P.ipv4("203.0.113.5", "198.51.100.1", P.TCP, P.tcp(40000, 443))),
        "vlan udp4 miss": P.eth(P.ETH_IP, P.ipv4("203.0.113.5", "198.51.100.1", P.UDP, P.udp(40000, 53)),
                                ((P.VLAN_Q, 100),)),
        "udp6 hit": P.udp6(hit6, 53),
        "udp6 miss": P.udp6("2001:ffff::5", 53),
        "tcp6 miss": P.tcp6("2001:ffff::5", 443),
    }


def pyxdp_table(pin: str, n4: int) -> Filter:
    """`deny from @banned` (N IPv4 /24s and N/10 IPv6 /48s in the set), then the four port rules."""
    flt = Filter.open(pin, create=True, capacity=max(1 << 20, n4))
    flt.ban([Prefix(4, struct.pack("!I", v4_net(i)), 24) for i in range(n4)]
            + [Prefix(6, v6_net(i), 48) for i in range(max(1, n4 // 10))])
    for r in PORT_RULES:
        flt.add_rule(r)
    return flt


def xdpfilter_peer(pin: str, n4: int, obj: str = "xdpfilt_dny_all.o") -> XdpFilterPeer:
    peer = XdpFilterPeer(obj, [v4_net(i) for i in range(n4)])
    ncpu = num_possible_cpus()
    n6 = max(1, n4 // 10)
    with peer.obj.map("filter_ipv6") as m:
        keys = b"".join(v6_net(i)[:15] + b"\x05" for i in range(min(n6, m.spec.max_entries - 16)))
        m.update_batch(keys, struct.pack("=Q", 1) * ncpu * (len(keys) // 16))
    return peer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    repeat, rounds = (200_000, 3) if args.quick else (1_000_000, 5)
    pk = kinds()
    progs: dict[str, Program] = {}
    closers = []
    from contextlib import ExitStack

    stack = ExitStack()
    try:
        names = ("empty", *SIZES, *(f"xf{n}" for n in SIZES), "xf-alw")
        paths = {name: stack.enter_context(scratch_pin(f"mx-{i}", make=False)) for i, name in enumerate(names)}
        floor = BpfObject(FLOOR)
        floor.load()
        progs["XDP_PASS only (floor)"] = floor.program()
        closers.append(floor.close)
        for label, n in SIZES.items():
            peer = xdpfilter_peer(paths[f"xf{label}"], n)
            progs[f"xdp-filter dny_all, {label} + {min(max(1, n // 10), 10_000):,} v6 addresses"] = peer.prog
            closers.append(peer.close)
        peer = xdpfilter_peer(paths["xf-alw"], 100_000, "xdpfilt_alw_all.o")
        progs["xdp-filter alw_all, 100k + 10,000 v6 addresses"] = peer.prog
        closers.append(peer.close)
        empty = Filter.open(paths["empty"], create=True)
        progs["pyxdp, no rules"] = empty.program()
        closers.append(empty.close)
        for label, n in SIZES.items():
            flt = pyxdp_table(paths[label], n)
            progs[f"pyxdp, @banned: {label} /24 + {max(1, n // 10):,} /48; 4 port rules"] = flt.program()
            closers.append(flt.close)
        res: dict[tuple[str, str], list[float]] = {}
        for _ in range(rounds):
            for pname, prog in progs.items():
                for kname, pkt in pk.items():
                    res.setdefault((pname, kname), []).append(prog.test_run(pkt, repeat=repeat).duration_ns)
        for prog in progs.values():
            prog.close()
    finally:
        for close in closers:
            close()
        stack.close()
    ref = "xdp-filter dny_all, 100k + 10,000 v6 addresses"
    floor = "XDP_PASS only (floor)"
    print(f"BPF_PROG_TEST_RUN, repeat={repeat}, median of {rounds} interleaved rounds, ns/packet; in brackets: "
          "ratio to xdp-filter dny_all with 100k addresses, then to the floor, on the same packet. xdp-filter's "
          "IPv6 map keeps its default capacity of 10,000.\n")
    print("| program | " + " | ".join(pk) + " |")
    print("|---|" + "---:|" * len(pk))
    for pname in progs:
        cells = []
        for k in pk:
            m = median(res[(pname, k)])
            cells.append(f"{m:.0f} ({m / median(res[(ref, k)]):.2f}, {m / median(res[(floor, k)]):.1f})")
        print(f"| {pname} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
