"""Where the datapath's time goes, by variants of the state (and of the load
knobs) under the shipped program, each row adding one step to the row above;
the difference between neighbouring rows is what that step costs. Timed with
BPF_PROG_TEST_RUN on the same packets, rounds interleaved. Run as root:

    sudo .venv/bin/python benchmarks/variants.py

The shipped datapath has no benchmark #ifdefs (issue 8). A step that no state
can switch off needs a build variant: a small .c file that #defines options
and #includes bpf/xdp_filter.bpf.c (as benchmarks/sweep_walk.bpf.c does); the
knobs the loader sets (`count_hits`) are switched here through
pyxdp.store.state.open_object on the same pinned maps.
"""

from __future__ import annotations

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
    other_lengths,
    packets,
    pin_path,
    table_nets,
    table_prefixes,
)

import pyxdp.store.objects as S  # noqa: E402
from pyxdp import Filter  # noqa: E402
from pyxdp.kernel.bpf import BpfObject, Program  # noqa: E402


def main() -> None:
    repeat, rounds = 1_000_000, 7
    pkts = packets()
    progs: dict[str, Program] = {}
    closers: list = []
    try:
        floor = BpfObject(FLOOR)
        floor.load()
        progs["floor: XDP_PASS only"] = floor.program()
        closers.append(floor.close)
        peer = XdpFilterPeer("xdpfilt_dny_all.o", table_nets())
        closers.append(peer.close)

        def state(name: str) -> str:
            pin = pin_path(f"var-{name}")
            closers.append(lambda: shutil.rmtree(pin, ignore_errors=True))
            return pin

        flt = Filter.open(state("none"), create=True)
        progs["+ parse, config, counters (no rules)"] = flt.program()
        closers.insert(0, flt.close)
        flt = Filter.open(state("ports"), create=True)
        for r in PORT_RULES:
            flt.add_rule(r)
        progs["+ rule match: 4 port rules (call, field lookups, 1 word)"] = flt.program()
        closers.insert(0, flt.close)
        flt, _ = banned_filter(state("one"), table_prefixes()[:1])
        progs["+ `deny from @banned`, set of one /24 (set_has call, 1 hash probe)"] = flt.program()
        closers.insert(0, flt.close)
        pin = state("banned")
        flt, _ = banned_filter(pin, table_prefixes())
        progs["set of 100,000 /24 (the core table)"] = flt.program()
        closers.insert(0, flt.close)
        obj = S.open_object(pin, count_hits=False)
        obj.only_program("xdp_filter")
        obj.load()
        progs["the same, loaded with count_hits = 0 (no hit counters)"] = obj.program("xdp_filter")
        closers.insert(0, obj.close)
        flt, _ = banned_filter(state("mixed"), table_prefixes() + other_lengths())
        progs["+ 10,000 over 24 other lengths (trie lookup)"] = flt.program()
        closers.insert(0, flt.close)
        progs["xdp-filter xdpfilt_dny_all.o (reference)"] = peer.prog
        med = interleaved(progs, pkts, repeat, rounds)
    finally:
        for prog in progs.values():
            prog.close()
        for close in closers:
            close()
    print(f"BPF_PROG_TEST_RUN, 64-byte UDP/IPv4 to port 53, repeat={repeat}, median of {rounds} interleaved "
          "rounds; each row adds one step to the row above (the count_hits row replaces one); port rules: "
          f"{', '.join(f'`{r}`' for r in PORT_RULES)}.\n")
    print("| variant | " + " | ".join(f"{k} ns | step" for k in pkts) + " |")
    print("|---|" + "---:|---:|" * len(pkts))
    prev: dict[str, float] = {}
    for label in progs:
        cells = []
        for k in pkts:
            m = med[(label, k)]
            cells.append(f"{m:.0f} | {'' if k not in prev or 'reference' in label else f'{m - prev[k]:+.0f}'}")
            if "count_hits" not in label and "reference" not in label:
                prev[k] = m
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
