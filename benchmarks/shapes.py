"""What specialising the program to the rule set's shape saves (issue 18): the
same pinned state test-run under the general program (shape 0) and under
programs loaded with ``knobs.shape`` leaving out what the state cannot use.
BPF_PROG_TEST_RUN, rounds interleaved, against xdp-filter's xdpfilt_dny_all
and the XDP_PASS floor in the same run. Run as root:

    sudo .venv/bin/python benchmarks/shapes.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
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
    interleaved,
    packets,
    pin_path,
    table_nets,
    table_prefixes,
)

import pyxdp.store.objects as S  # noqa: E402
from pyxdp import Filter  # noqa: E402
from pyxdp.kernel.bpf import BpfObject, Program  # noqa: E402
from pyxdp.layout import Shape  # noqa: E402

RULE_PARTS = Shape.NO_IFACE | Shape.NO_LIT4 | Shape.NO_LIT6 | Shape.NO_TRACE


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    repeat, rounds = (200_000, 5) if args.quick else (1_000_000, 9)
    pkts = packets()
    progs: dict[str, Program] = {}
    closers: list = []

    def variant(pin: str, shape: int) -> Program:
        obj = S.open_object(pin, shape=shape)
        obj.only_program("xdp_filter")
        obj.load()
        closers.insert(0, obj.close)
        return obj.program("xdp_filter")

    try:
        floor = BpfObject(FLOOR)
        floor.load()
        progs["floor: XDP_PASS only"] = floor.program()
        closers.append(floor.close)
        peer = XdpFilterPeer("xdpfilt_dny_all.o", table_nets())
        closers.append(peer.close)
        progs["xdp-filter xdpfilt_dny_all"] = peer.prog

        def state(name: str) -> str:
            pin = pin_path(f"shape-{name}")
            closers.append(lambda: shutil.rmtree(pin, ignore_errors=True))
            return pin

        for on in (True, False):
            tag = "state on" if on else "state off"
            off = Shape(0) if on else Shape.NO_STATE
            pin = state(f"none-{int(on)}")
            flt = Filter.open(pin, create=True)
            closers.insert(0, flt.close)
            if not on:
                flt.set_established(False)
            progs[f"no rules, {tag}: general"] = flt.program()
            progs[f"no rules, {tag}: shaped"] = variant(pin, off | Shape.NO_RULES | Shape.NO_TRACE)
            pin = state(f"set-{int(on)}")
            flt, _ = banned_filter(pin, table_prefixes())
            closers.insert(0, flt.close)
            if not on:
                flt.set_established(False)
            progs[f"set + 4 ports, {tag}: general"] = flt.program()
            progs[f"set + 4 ports, {tag}: shaped"] = variant(pin, off | RULE_PARTS)
        med = interleaved(progs, pkts, repeat, rounds)
    finally:
        for prog in progs.values():
            prog.close()
        for close in closers:
            close()
    ref = {k: med[("xdp-filter xdpfilt_dny_all", k)] for k in pkts}
    print(f"BPF_PROG_TEST_RUN, 64-byte UDP/IPv4 to port 53, repeat={repeat}, median of {rounds} interleaved "
          f"rounds; port rules: {', '.join(f'`{r}`' for r in PORT_RULES)}; shaped rule sets leave out "
          "interface, prefix and trace code.\n")
    print("| program | " + " | ".join(f"{k} ns | x xdp-filter" for k in pkts) + " |")
    print("|---|" + "---:|---:|" * len(pkts))
    for label in progs:
        cells = [f"{med[(label, k)]:.0f} | {med[(label, k)] / ref[k]:.2f}" for k in pkts]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
