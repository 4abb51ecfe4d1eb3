"""The reply guard (issue 18, item 2): this tree's object against an older
commit's (default 7e57cc5, the last without the guard), both loaded
standalone with private maps (connection state on, the default timeouts,
nothing attached), test-run on the same packets in interleaved rounds. Run
as root from the top of the tree (needs git history):

    sudo .venv/bin/python benchmarks/guard.py [--against COMMIT] [--rounds N]

Rows: a packet that is not a reply (IPv4 UDP, IPv6 TCP; the guard skips the
flow lookup), a reply of a tracked flow (the guard's two array reads come on
top of the lookup), and egress: the host's ACK in a tracked flow.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))

from core import private_maps  # noqa: E402
from helpers import packets as P  # noqa: E402

from pyxdp import layout as L  # noqa: E402
from pyxdp.kernel.bpf import BpfObject, Program  # noqa: E402
from pyxdp.store.guard import GUARD_MAP, arm_guard  # noqa: E402
from pyxdp.store.objects import OBJECT_PATH  # noqa: E402
from pyxdp.store.state import Config  # noqa: E402

HOST, PEER = "10.0.0.2", "198.51.100.7"
OUT_SYN = P.eth(P.ETH_IP, P.ipv4(HOST, PEER, P.TCP, P.tcp(40001, 443, flags=0x02)))
OUT_ACK = P.eth(P.ETH_IP, P.ipv4(HOST, PEER, P.TCP, P.tcp(40001, 443, flags=0x10)))
INGRESS = {
    "UDP/IPv4, not a reply": P.eth(P.ETH_IP, P.ipv4(PEER, HOST, P.UDP, P.udp(40000, 5000, b"x" * 18))),
    "TCP/IPv6, not a reply": P.eth(P.ETH_IPV6, P.ipv6("2001:db8::7", "2001:db8::2", P.TCP,
                                                      P.tcp(40000, 8080, flags=0x10))),
    "TCP/IPv4 reply (tracked)": P.eth(P.ETH_IP, P.ipv4(PEER, HOST, P.TCP, P.tcp(443, 40001, flags=0x10))),
}


def load(path: str) -> BpfObject:
    obj = private_maps(BpfObject(path))
    obj.only_program("xdp_filter", "egress", "sweep_start")
    obj.load()
    obj.map("cfg").update(L.U32.pack(0), Config().encode())
    if GUARD_MAP in obj.map_names:
        arm_guard(obj.map(GUARD_MAP))
    with obj.program("sweep_start") as p:  # the sweeper's timer: the guard's clock
        p.test_run(bytes(64))
    return obj


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", default="7e57cc5")
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()
    old_obj = subprocess.run(["git", "-C", TOP, "show", f"{args.against}:pyxdp/xdp_filter.bpf.o"],
                             capture_output=True, check=True).stdout
    with tempfile.NamedTemporaryFile(suffix=".bpf.o") as tmp:
        tmp.write(old_obj)
        tmp.flush()
        objs = {f"{args.against} (before)": load(tmp.name), "this tree": load(OBJECT_PATH)}
    time.sleep(1.5)  # a sweeper tick: the guard's clock is set
    progs: dict[str, tuple[Program, Program]] = {}
    for name, o in objs.items():
        x, e = o.program("xdp_filter"), o.program("egress")
        e.test_run(OUT_SYN)  # the host opens the flow ...
        e.test_run(OUT_ACK)  # ... and acknowledges the answer: established
        progs[name] = (x, e)
    res: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(args.rounds):
            for name, (x, e) in progs.items():
                for k, pkt in INGRESS.items():
                    res.setdefault((name, k), []).append(x.test_run(pkt, repeat=100_000).duration_ns)
                res.setdefault((name, "egress: ACK of a tracked flow"), []).append(
                    e.test_run(OUT_ACK, repeat=100_000).duration_ns)
    finally:
        for x, e in progs.values():
            x.close()
            e.close()
        for o in objs.values():
            o.close()
    keys = [*INGRESS, "egress: ACK of a tracked flow"]
    print(f"BPF_PROG_TEST_RUN, repeat=100000, median of {args.rounds} interleaved rounds, ns/packet; both objects "
          "standalone (private maps), connection state on.\n")
    print("| object | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    med = {k: statistics.median(v) for k, v in res.items()}
    base = next(iter(objs))
    for name in objs:
        cells = [f"{med[(name, k)]:.0f}" + ("" if name == base else f" ({med[(name, k)] - med[(base, k)]:+.0f})")
                 for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
