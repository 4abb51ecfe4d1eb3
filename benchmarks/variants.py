"""Where the datapath's time goes: the filter built with steps cut out
(BENCH_* macros in bpf/xdp_filter.bpf.c), each variant loaded on the same
pinned state (100,000 /24 prefixes, 4 ports) and timed with BPF_PROG_TEST_RUN
on the same packets. The difference between neighbouring variants is what a
step costs. Needs clang-19 (scripts/setup.sh --bench); run as root:

    sudo .venv/bin/python benchmarks/variants.py
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))

import packets as P  # noqa: E402
from core import FLOOR, median, scratch_pin, table_addresses  # noqa: E402

from pyxdp import Filter  # noqa: E402
from pyxdp.bpf import BpfObject, Program  # noqa: E402
from pyxdp.entries import Prefix  # noqa: E402
from pyxdp.layout import Action  # noqa: E402

# label -> macros; each row adds one step to the one above it
VARIANTS = [
    ("floor: XDP_PASS only", None),
    ("+ config lookup", "-DBENCH_ONLY_CONFIG"),
    ("+ parse (Ethernet, IPv4, UDP)", "-DBENCH_ONLY_PARSE"),
    ("+ call to finish, policy, trace check", "-DBENCH_NO_PREFIX -DBENCH_NO_PORTS -DBENCH_NO_STATS"),
    ("+ per-CPU counters", "-DBENCH_NO_PREFIX -DBENCH_NO_PORTS"),
    ("+ port array lookup", "-DBENCH_NO_PREFIX"),
    ("+ prefix match (the shipped filter)", ""),
]
PACKETS = {"source in table": P.udp4("10.3.84.5", 53), "far source": P.udp4("203.0.113.5", 53)}


def build(out_dir: str, i: int, macros: str) -> str:
    out = os.path.join(out_dir, f"v{i}.bpf.o")
    subprocess.run(["clang-19", "-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", f"-I{TOP}", *macros.split(),
                    "-c", os.path.join(TOP, "bpf", "xdp_filter.bpf.c"), "-o", out], check=True)
    return out


def main() -> None:
    repeat, rounds = 1_000_000, 7
    progs: list[tuple[str, Program, BpfObject]] = []
    with tempfile.TemporaryDirectory() as tmp, scratch_pin("variants") as pin:
        with Filter.open(pin, create=True) as flt:
            flt.add_targets((Prefix(4, struct.pack("!I", a), 24) for a in table_addresses()), Action.DENY)
            flt.deny("22/tcp", "80/tcp", "443/tcp", "8053/udp")
        for i, (label, macros) in enumerate(VARIANTS):
            obj = BpfObject(FLOOR if macros is None else build(tmp, i, macros),
                            pin_root=None if macros is None else pin)
            if macros is not None:
                obj.private_map("stats")
                obj.private_map("events")
            obj.load()
            progs.append((label, obj.program(), obj))
        res: dict[tuple[str, str], list[float]] = {}
        for _ in range(rounds):
            for label, prog, _obj in progs:
                for kname, pkt in PACKETS.items():
                    res.setdefault((label, kname), []).append(prog.test_run(pkt, repeat=repeat).duration_ns)
        for _label, prog, obj in progs:
            prog.close()
            obj.close()
    print(f"BPF_PROG_TEST_RUN, 64-byte UDP/IPv4, repeat={repeat}, median of {rounds} interleaved rounds; "
          "state: 100,000 /24 prefixes (one hashed length), 4 ports.\n")
    print("| variant | " + " | ".join(f"{k} ns | step" for k in PACKETS) + " |")
    print("|---|" + "---:|---:|" * len(PACKETS))
    prev: dict[str, float] = {}
    for label, _prog, _obj in progs:
        cells = []
        for k in PACKETS:
            m = median(res[(label, k)])
            cells.append(f"{m:.0f} | {'' if k not in prev else f'{m - prev[k]:+.0f}'}")
            prev[k] = m
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
