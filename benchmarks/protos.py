"""Rules naming another IP protocol (issue 20: ``proto esp|gre|132``): the
per-packet cost of the 256-class protocol block (``RS_PROTO_NUM``), against
the object before it, on one pinned state, BPF_PROG_TEST_RUN.

Rule set A: 99 ``deny proto tcp from 10.A.B.0/24 to any port P`` and
``deny proto udp from 192.0.2.0/24 to any port 53`` (the UDP probe matches
it, last). Rule set B: A with ``allow proto esp from 203.0.113.0/24`` first,
which turns the block on. Probes: 64-byte UDP to port 53; ESP from
203.0.113.1. Both objects are loaded (general shape) against the same pinned
maps and run interleaved. ``--before OBJ``: the object without the block
(default: the merge base's, ``git show BASE:pyxdp/xdp_filter.bpf.o``).

    sudo .venv/bin/python benchmarks/protos.py [--before OBJ] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))
sys.path.insert(0, HERE)

from core import pin_path  # noqa: E402
from helpers import packets as P  # noqa: E402

import pyxdp.store.objects as O  # noqa: E402
from pyxdp import Filter  # noqa: E402
from pyxdp.kernel.bpf import BpfObject, Program  # noqa: E402
from pyxdp.model.rules import parse_rule  # noqa: E402

PIN = pin_path("protos")
FILLER = [f"deny proto tcp from 10.{i >> 8}.{i & 255}.0/24 to any port {i + 1}" for i in range(99)]
LAST = "deny proto udp from 192.0.2.0/24 to any port 53"
SETS = {"A": FILLER + [LAST],
        "B (A + 'allow proto esp' first)": ["allow proto esp from 203.0.113.0/24", *FILLER, LAST]}
PROBES = {"UDP to 53": P.udp4("192.0.2.1", 53),
          "ESP": P.eth(P.ETH_IP, P.ipv4("203.0.113.1", "198.51.100.1", 50, b"\0" * 16))}


def load(path: str) -> tuple[BpfObject, Program]:
    saved = O.OBJECT_PATH
    O.OBJECT_PATH = path
    try:
        obj = O.open_object(PIN, shape=0)
    finally:
        O.OBJECT_PATH = saved
    obj.load()
    return obj, obj.program()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", help="the object without the protocol block")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = args.before
        if before is None:
            base = subprocess.run(["git", "-C", TOP, "merge-base", "HEAD", "main"], capture_output=True, text=True,
                                  check=True).stdout.strip()
            before = os.path.join(tmp, "before.bpf.o")
            with open(before, "wb") as fh:
                fh.write(subprocess.run(["git", "-C", TOP, "show", f"{base}:pyxdp/xdp_filter.bpf.o"],
                                        capture_output=True, check=True).stdout)
        res: dict[tuple[str, str, str], list[float]] = {}
        shutil.rmtree(PIN, ignore_errors=True)
        try:
            with Filter.open(PIN, create=True, rules=1024) as flt:
                objs = {"before": load(before), "after": load(O.OBJECT_PATH)}
                for _ in range(args.rounds):
                    for sname, texts in SETS.items():
                        flt.replace_rules([parse_rule(t) for t in texts])
                        for oname, (_obj, prog) in objs.items():
                            for pname, pkt in PROBES.items():
                                r = prog.test_run(pkt, repeat=args.repeat)
                                res.setdefault((sname, pname, oname), []).append(r.duration_ns)
                for obj, prog in objs.values():
                    prog.close()
                    obj.close()
        finally:
            shutil.rmtree(PIN, ignore_errors=True)
    print(f"BPF_PROG_TEST_RUN repeat={args.repeat}, median of {args.rounds} interleaved rounds, general program\n")
    print("| rules | probe | before, ns | after, ns | change |")
    print("|---|---|---:|---:|---:|")
    for sname in SETS:
        for pname in PROBES:
            b = statistics.median(res[(sname, pname, "before")])
            a = statistics.median(res[(sname, pname, "after")])
            print(f"| {sname} | {pname} | {b:.0f} | {a:.0f} | {a - b:+.0f} |")


if __name__ == "__main__":
    main()
