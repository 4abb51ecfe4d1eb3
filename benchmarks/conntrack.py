"""Connection state (issue 10's "Speed" targets). Run as root from the top of
the tree:

    sudo .venv/bin/python benchmarks/conntrack.py           # about a minute
    sudo .venv/bin/python benchmarks/conntrack.py --quick

It prints Markdown tables (medians of interleaved rounds, differences and
ratios against baselines measured in the same run):

- ingress (BPF_PROG_TEST_RUN of the attached XDP program): the same rules
  (`allow 22/tcp`, `allow 80/tcp`, `allow 443/tcp`, `deny 53/udp`) with
  connection state off, on with an empty table, and on with 1,000,000
  tracked flows; packets that are not replies (the lookup misses, the rules
  decide) and a reply (the lookup hits and decides); the XDP_PASS floor;
- egress (BPF_PROG_TEST_RUN of the tc program): a packet of a flow already
  tracked (the common case: a lookup, no write), with state off as the
  baseline (two config reads, then return);
- memory of the flow tables (IPv4 and IPv6, each of that capacity) at 65,536
  (default) and 1,048,576 flows per family: what the kernel charges for the
  maps (bpftool's bytes_memlock) and how much MemAvailable dropped when the
  state was made.

Pin dirs /sys/fs/bpf/pyxdp-bench-<pid>-* are removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))

from helpers import packets as P  # noqa: E402

from pyxdp import Filter  # noqa: E402
from pyxdp import layout as L  # noqa: E402
from pyxdp.kernel.bpf import BpfObject, Program  # noqa: E402
from pyxdp.store.clock import monotonic_ns  # noqa: E402
from pyxdp.store.guard import GUARD_MAP, cover_flows  # noqa: E402
from pyxdp.store.objects import EGRESS_PIN  # noqa: E402

FLOOR = os.path.join(HERE, "xdp_pass.bpf.o")
TC_FLOOR = os.path.join(HERE, "tc_pass.bpf.o")
RULES = ("allow 22/tcp", "allow 80/tcp", "allow 443/tcp", "deny 53/udp")
MILLION = 1_000_000
HOST, PEER = "10.0.0.2", "198.51.100.7"


def pin_path(name: str) -> str:
    return f"/sys/fs/bpf/pyxdp-bench-{os.getpid()}-{name}"


def ingress_packets() -> dict[str, bytes]:
    return {
        "UDP/IPv4, not a reply": P.eth(P.ETH_IP, P.ipv4(PEER, HOST, P.UDP, P.udp(40000, 5000, b"x" * 18))),
        "TCP/IPv6, not a reply": P.eth(P.ETH_IPV6, P.ipv6("2001:db8::7", "2001:db8::2", P.TCP,
                                                          P.tcp(40000, 8080, flags=0x10))),
        "TCP/IPv4 reply (tracked)": P.eth(P.ETH_IP, P.ipv4(PEER, HOST, P.TCP, P.tcp(443, 40001, flags=0x10))),
        # to the tracked flow's local port from another peer: the reply guard lets it through to a lookup that misses
        "TCP/IPv4 to a port in use, not a reply": P.eth(P.ETH_IP, P.ipv4("198.51.100.99", HOST, P.TCP,
                                                                        P.tcp(443, 40001, flags=0x10))),
    }


def outbound_packet(flags: int = 0x10) -> bytes:
    """The host's side of the tracked flow (HOST:40001 -> PEER:443): its SYN
    (0x02) opens it, an ACK (0x10) is the common case after."""
    return P.eth(P.ETH_IP, P.ipv4(HOST, PEER, P.TCP, P.tcp(40001, 443, flags=flags)))


def fill_flows(flt: Filter, n: int) -> float:
    """``n`` random established IPv4/IPv6 flows, written in batches; returns seconds taken."""
    maps = {4: flt.state.map("flows4"), 6: flt.state.map("flows6")}
    rnd = random.Random(7)
    expires = monotonic_ns() + 3600 * 10**9
    value = L.FLOW.pack(expires, L.FlowState.ESTABLISHED, 0)
    t = time.perf_counter()
    batch = 65536
    for start in range(0, n, batch):
        keys = {4: bytearray(), 6: bytearray()}
        for _ in range(min(batch, n - start)):
            fam = 4 if rnd.random() < 0.7 else 6
            size = 4 if fam == 4 else 16
            fmt = L.FLOW_KEY4 if fam == 4 else L.FLOW_KEY
            raddr = rnd.getrandbits(8 * size).to_bytes(size, "big")
            laddr = rnd.getrandbits(8 * size).to_bytes(size, "big")
            keys[fam] += fmt.pack(fam, 6, rnd.choice((443, 80, 53)), rnd.randrange(32768, 61000), 0, raddr, laddr)
        for fam, ks in keys.items():
            size = L.FLOW_KEY4.size if fam == 4 else L.FLOW_KEY.size
            maps[fam].update_batch(bytes(ks), value * (len(ks) // size))
    return time.perf_counter() - t


def memlock(pin: str) -> int:
    """What the kernel charges for both flow tables."""
    total = 0
    for name in ("flows4", "flows6"):
        out = subprocess.run(["bpftool", "-j", "map", "show", "pinned", os.path.join(pin, name)],
                             capture_output=True, text=True, check=True).stdout
        total += int(json.loads(out)["bytes_memlock"])
    return total


def mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable")


def make(name: str, established: bool, flows: int | None = None) -> tuple[Filter, int]:
    """A state with the four rules; returns it and how much MemAvailable fell while it was made."""
    pin = pin_path(name)
    shutil.rmtree(pin, ignore_errors=True)
    before = mem_available()
    flt = Filter.open(pin, create=True, flows=flows)
    flt.program().close()  # load and pin the programs
    used = before - mem_available()
    for r in RULES:
        flt.add_rule(r)
    flt.set_established(established)
    return flt, used


def interleaved(runs: dict[str, tuple[Program, bytes]], repeat: int, rounds: int) -> dict[str, float]:
    res: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, (prog, pkt) in runs.items():
            res[k].append(prog.test_run(pkt, repeat=repeat).duration_ns)
    return {k: statistics.median(v) for k, v in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    repeat, rounds = (20_000, 9) if args.quick else (100_000, 31)
    made: list[Filter] = []
    progs: list[Program] = []
    try:
        off, _ = make("off", False)
        made.append(off)
        empty, mem_default = make("empty", True)
        made.append(empty)
        full, mem_million = make("full", True, flows=1 << 20)
        made.append(full)
        lock_default, lock_million = memlock(empty.state.pin_dir), memlock(full.state.pin_dir)
        fill_secs = fill_flows(full, MILLION)
        # as if an egress program had recorded them: their local ports' reply guards cover them
        cover_flows([full.state.map(n) for n in ("flows4", "flows6")], full.state.map(GUARD_MAP), monotonic_ns(),
                    3600)
        floor = BpfObject(FLOOR)
        floor.load()
        fprog = floor.program()
        progs.append(fprog)
        tc_floor = BpfObject(TC_FLOOR)
        tc_floor.load()
        tprog = tc_floor.program()
        progs.append(tprog)
        xdp = {"off": off.program(), "empty": empty.program(), "full": full.program()}
        egress = {k: Program.from_pin(os.path.join(f.state.pin_dir, EGRESS_PIN))
                  for k, f in (("off", off), ("empty", empty), ("full", full))}
        progs += [*xdp.values(), *egress.values()]
        out = outbound_packet()
        for k in ("empty", "full"):
            egress[k].test_run(outbound_packet(0x02))  # the host opens the flow (SYN) ...
            egress[k].test_run(out)  # ... and acknowledges the answer: established, its replies tracked
        tracked = sum(1 for name in ("flows4", "flows6") for _ in full.state.map(name).keys_fast())

        pkts = ingress_packets()
        runs: dict[str, tuple[Program, bytes]] = {}
        for pk, pkt in pkts.items():
            runs[f"floor|{pk}"] = (fprog, pkt)
            for k, prog in xdp.items():
                runs[f"{k}|{pk}"] = (prog, pkt)
        runs["egress-floor|out"] = (tprog, out)
        for k, prog in egress.items():
            runs[f"egress-{k}|out"] = (prog, out)
        med = interleaved(runs, repeat, rounds)
        reasons = {}
        for k, prog in xdp.items():
            for pk, pkt in pkts.items():
                reasons[(k, pk)] = prog.test_run(pkt).retval
    finally:
        for p in progs:
            p.close()
        for f in made:
            pin = f.state.pin_dir
            f.close()
            shutil.rmtree(pin, ignore_errors=True)

    print(f"# Connection state ({platform.machine()}, kernel {platform.release()}, {os.cpu_count()} CPUs)\n")
    print(f"BPF_PROG_TEST_RUN, repeat={repeat}, median of {rounds} interleaved rounds; ns/packet as the kernel "
          f"reports it. Rules: {', '.join(f'`{r}`' for r in RULES)}; policy pass. The 1M table: {MILLION:,} "
          f"random flows (70% IPv4) written in {fill_secs:.1f} s ({tracked:,} entries counted after), "
          "plus the tracked one.\n")
    print("## Ingress (XDP)\n")
    print("| connection state | " + " | ".join(pkts) + " |")
    print("|---|" + "---:|" * len(pkts))
    labels = {"off": "off (baseline)", "empty": "on, empty table", "full": "on, 1,000,000 flows"}
    print("| XDP_PASS only (floor) | " + " | ".join(f"{med[f'floor|{pk}']:.0f}" for pk in pkts) + " |")
    for k, label in labels.items():
        cells = []
        for pk in pkts:
            v = med[f"{k}|{pk}"]
            cells.append(f"{v:.0f}" if k == "off" else f"{v:.0f} ({v - med[f'off|{pk}']:+.0f})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\n(in brackets: ns added against state off in the same run; the tracked reply skips the rules, so it "
          "can cost less than with state off)\n")
    assert set(reasons.values()) == {2}, reasons  # XDP_PASS: no rule denies these probes
    print("## Egress (tc), a packet of a tracked flow\n")
    print("| program | ns/packet | over the tc floor | vs state off |")
    print("|---|---:|---:|---:|")
    base, tfloor = med["egress-off|out"], med["egress-floor|out"]
    for k, label in (("floor", "a tc program that only returns (floor)"),
                     ("off", "pyxdp, state off (two config reads, then return)"),
                     ("empty", "pyxdp, on, the flow tracked"), ("full", "pyxdp, on, the flow tracked among 1,000,000")):
        v = med[f"egress-{k}|out"]
        print(f"| {label} | {v:.0f} | {v - tfloor:+.0f} | {v - base:+.0f} |")
    print("\n## Memory of the flow table\n")
    print("| flows per family (IPv4 + IPv6 tables) | bytes_memlock (bpftool) | MemAvailable drop when the state was "
          "made |")
    print("|---:|---:|---:|")
    print(f"| 65,536 (default) | {lock_default / 2**20:.1f} MiB | {mem_default / 2**20:.1f} MiB |")
    print(f"| 1,048,576 | {lock_million / 2**20:.1f} MiB | {mem_million / 2**20:.1f} MiB |")
    print("\n(MemAvailable's drop includes every other map of a state (set elements are allocated as added, "
          "so an empty state is mostly the flow table) and is noisy.)")



if __name__ == "__main__":
    main()
