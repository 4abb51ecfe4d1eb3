"""Issue 18's goals per packet, in one run: the same pinned states test-run
under the general program (shape 0), under programs loaded with
``knobs.shape`` leaving out what the state cannot use ("shaped"), and under
the program with the fast paths (``xdp_filter_fast``: a leading ban list
probed once inline, port-only rules by the port's vectors; "fast").
BPF_PROG_TEST_RUN, every (program, packet) pair once per round, rounds
interleaved, medians; xdp-filter's ``xdpfilt_dny_all`` (100,000 addresses,
four ports, private maps) and the XDP_PASS floor in the same rounds. Run as
root:

    sudo .venv/bin/python benchmarks/shapes.py [--quick] [--rounds N]

Rows: no rules, connection state on and off; ``deny from @banned`` (100,000
/24s) + four port rules, state on and off, a source in the set, in a /24
hole, far away; 1,024 rules (distinct /24 + port), the last matches, state
on; IPv6 that is not a reply and a reply of a tracked flow, state on against
off.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))

from core import (  # noqa: E402
    FLOOR,
    PORT_RULES,
    XdpFilterPeer,
    banned_filter,
    packets,
    pin_path,
    table_nets,
    table_prefixes,
)
from helpers import packets as P  # noqa: E402
from rules import pyxdp_rules  # noqa: E402

import pyxdp.store.objects as S  # noqa: E402
from pyxdp import Filter  # noqa: E402
from pyxdp.kernel.bpf import BpfObject, Program  # noqa: E402
from pyxdp.layout import Shape  # noqa: E402
from pyxdp.model.fastpath import fast_paths  # noqa: E402
from pyxdp.model.rules import parse_rule  # noqa: E402

# what the benchmark states never use: interface rules, IPv6 prefixes in rules, sampled tracing
UNUSED = Shape.NO_IFACE | Shape.NO_LIT6 | Shape.NO_TRACE
HOST6, PEER6 = "2001:db8::2", "2001:db8::7"
OUT_SYN6 = P.eth(P.ETH_IPV6, P.ipv6(HOST6, PEER6, P.TCP, P.tcp(40001, 443, flags=0x02, seq=1000)))
OUT_ACK6 = P.eth(P.ETH_IPV6, P.ipv6(HOST6, PEER6, P.TCP, P.tcp(40001, 443, flags=0x10, seq=1001)))
V6 = {
    "IPv6 TCP, not a reply": P.eth(P.ETH_IPV6, P.ipv6(PEER6, HOST6, P.TCP, P.tcp(40000, 8080, flags=0x10))),
    "IPv6 TCP, a reply (tracked)": P.eth(P.ETH_IPV6, P.ipv6(PEER6, HOST6, P.TCP, P.tcp(443, 40001, flags=0x10))),
}
RULES_PROBE = P.udp4("192.0.2.1", 53)
RULES_LAST = "deny proto udp from 192.0.2.0/24 to any port 53"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    args = ap.parse_args()
    repeat, rounds = (200_000, 5) if args.quick else (1_000_000, 9)
    rounds = args.rounds or rounds
    set_pkts = packets()
    jobs: list[tuple[str, str, Program, bytes]] = []  # (row, column, program, packet)
    closers: list = []
    rows: dict[str, str] = {}  # row -> its group

    def variant(pin: str, shape: Shape, *extra: str, count_hits: bool = True) -> Program:
        obj = S.open_object(pin, shape=int(shape), count_hits=count_hits)
        name = S.filter_program(int(shape))
        obj.only_program(name, *extra)
        obj.load()
        closers.insert(0, obj.close)
        return obj.program(name)

    def add(group: str, row: str, prog: Program, pkts: dict[str, bytes]) -> None:
        rows[row] = group
        for col, pkt in pkts.items():
            jobs.append((row, col, prog, pkt))

    def state(name: str) -> str:
        pin = pin_path(f"shape-{name}")
        shutil.rmtree(pin, ignore_errors=True)
        closers.append(lambda: shutil.rmtree(pin, ignore_errors=True))
        return pin

    progs: list[Program] = []
    none_off = ""
    try:
        floor = BpfObject(FLOOR)
        floor.load()
        closers.append(floor.close)
        fprog = floor.program()
        progs.append(fprog)
        peer = XdpFilterPeer("xdpfilt_dny_all.o", table_nets())
        closers.append(peer.close)
        all_pkts = {**set_pkts, "1,024 rules probe": RULES_PROBE, **V6}
        add("base", "floor: XDP_PASS only", fprog, all_pkts)
        add("base", "xdp-filter xdpfilt_dny_all", peer.prog, all_pkts)

        for on in (True, False):
            tag = "state on" if on else "state off"
            off = Shape(0) if on else Shape.NO_STATE
            pin = none_off = state(f"none-{int(on)}")
            flt = Filter.open(pin, create=True)
            closers.insert(0, flt.close)
            if not on:
                flt.set_established(False)
            else:  # a tracked IPv6 flow for the reply row: the host opens it, acknowledges the answer
                obj = S.open_object(pin)
                obj.only_program("egress")
                obj.load()
                closers.insert(0, obj.close)
                with obj.program("egress") as eg:
                    eg.test_run(OUT_SYN6)
                    eg.test_run(OUT_ACK6)
            gen = flt.program()
            progs.append(gen)
            add("none", f"no rules, {tag}: general", gen, {**set_pkts, **V6})
            add("none", f"no rules, {tag}: shaped", variant(pin, off | UNUSED | Shape.NO_RULES), {**set_pkts, **V6})
            add("none", f"no rules, {tag}: fast", variant(pin, off | UNUSED | Shape.NO_RULES | fast_paths([])),
                {**set_pkts, **V6})

            pin = state(f"set-{int(on)}")
            flt, _ = banned_filter(pin, table_prefixes())
            closers.insert(0, flt.close)
            if not on:
                flt.set_established(False)
            rules = [parse_rule(t) for t in ("deny from @banned", *PORT_RULES)]
            gen = flt.program()
            progs.append(gen)
            shaped = off | UNUSED | Shape.NO_LIT4
            add("set", f"set + 4 ports, {tag}: general", gen, set_pkts)
            add("set", f"set + 4 ports, {tag}: shaped", variant(pin, shaped), set_pkts)
            add("set", f"set + 4 ports, {tag}: fast", variant(pin, shaped | fast_paths(rules)), set_pkts)
            if not on:  # where the fast path's time goes, step by step (state off)
                add("stages", "fast, no rules", variant(none_off, off | UNUSED |
                                                        Shape.NO_RULES | fast_paths([])), set_pkts)
                ban_pin = state("ban-0")
                ban, _ = banned_filter(ban_pin, table_prefixes(), port_rules=False)
                closers.insert(0, ban.close)
                ban.set_established(False)
                add("stages", "fast, `deny from @banned` alone (the probe)",
                    variant(ban_pin, shaped | fast_paths(rules[:1])), set_pkts)
                add("stages", "fast, + the 4 port rules (the port walk)", variant(pin, shaped | fast_paths(rules)),
                    set_pkts)
                add("stages", "the same, no hit counters (count_hits 0)",
                    variant(pin, shaped | fast_paths(rules), count_hits=False), set_pkts)

        pin = state("rules")
        flt = Filter.open(pin, create=True)
        closers.insert(0, flt.close)
        flt.replace_rules([parse_rule(t) for t in pyxdp_rules(1024, RULES_LAST)])
        gen = flt.program()
        progs.append(gen)
        probe = {"1,024 rules probe": RULES_PROBE}
        assert gen.test_run(RULES_PROBE).retval == 1, "the last rule must drop the probe"
        add("rules", "1,024 rules, last matches, state on: general", gen, probe)
        add("rules", "1,024 rules, last matches, state on: shaped",
            variant(pin, UNUSED | Shape.NO_SETS | Shape.NO_IFACE), probe)

        res: dict[tuple[str, str], list[float]] = {}
        for _ in range(rounds):
            for row, col, prog, pkt in jobs:
                res.setdefault((row, col), []).append(prog.test_run(pkt, repeat=repeat).duration_ns)
    finally:
        for prog in progs:
            prog.close()
        for close in closers:
            close()
    med = {k: statistics.median(v) for k, v in res.items()}
    ref = {col: med[("xdp-filter xdpfilt_dny_all", col)] for col in all_pkts}

    def cell(row: str, col: str) -> str:
        return f"{med[(row, col)]:.0f} ({med[(row, col)] / ref[col]:.2f})"

    print(f"BPF_PROG_TEST_RUN, repeat={repeat}, median of {rounds} interleaved rounds; ns/packet and, in brackets, "
          "the ratio to xdp-filter `xdpfilt_dny_all` (100,000 addresses, ports 22, 80, 443, 53) on the same "
          f"packet in the same rounds. Port rules: {', '.join(f'`{r}`' for r in PORT_RULES)}. shaped: "
          "knobs.shape leaves out interface, IPv6-prefix and trace code and what the state does not use; "
          "fast: the same in xdp_filter_fast with its fast paths.\n")
    for group, cols in (("set", list(set_pkts)), ("none", [*set_pkts, *V6]), ("rules", ["1,024 rules probe"]),
                        ("stages", list(set_pkts))):
        print("| program | " + " | ".join(cols) + " |")
        print("|---|" + "---:|" * len(cols))
        for row in [r for r, g in rows.items() if g in ("base", group)]:
            print(f"| {row} | " + " | ".join(cell(row, c) for c in cols) + " |")
        print()
    for kind in ("general", "shaped", "fast"):
        on, off = f"no rules, state on: {kind}", f"no rules, state off: {kind}"
        diffs = [f"{col}: {med[(on, col)] - med[(off, col)]:+.0f} ns" for col in V6]
        print(f"- IPv6, state on minus state off ({kind}): " + "; ".join(diffs))


if __name__ == "__main__":
    main()
