"""Ordered rules (the rules issue; the benchmarks issue, part 6): per-packet
cost at 10, 100, 1,024 and 8,192 rules, the deciding rule last (worst case),
next to the no-rule cost; then the same rule lists on the wire against
nftables, which walks its rules one by one.

Part 1, BPF_PROG_TEST_RUN: the filter program of one state made with room
for 8,192 rules; for each count N, rules 1..N-1 are
``deny proto tcp from 10.A.B.0/24 to any port P`` (distinct, none matches
the probe) and rule N is ``deny proto udp from 192.0.2.0/24 to any port 53``,
which the probe (64-byte UDP from 192.0.2.1 to port 53) matches. Every
vector word is then walked. Also: the same program with no rules, and the
XDP_PASS-only floor, interleaved in the same rounds.

Part 2, the wire (as benchmarks/wire.py: trafgen floods 64-byte UDP from
10.66.0.1 to port 9 over a veth on one CPU): pyxdp native with the N rules
(rule N matching the flood: ``deny proto udp from 10.66.0.1 to any port 9``)
against nftables at netdev ingress with the same N rules
(``ip saddr 10.A.B.0/24 tcp dport P drop`` ..., then
``ip saddr 10.66.0.1 udp dport 9 drop``). Run as root after
scripts/setup.sh --bench:

    sudo .venv/bin/python benchmarks/rules.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))
sys.path.insert(0, HERE)

import wire  # noqa: E402
from core import XdpFilterPeer, pin_path, table_nets  # noqa: E402
from helpers import packets as P  # noqa: E402

from pyxdp import Filter  # noqa: E402
from pyxdp.kernel.bpf import BpfObject  # noqa: E402
from pyxdp.model.rules import MAX_RULES, parse_rule  # noqa: E402

COUNTS = [10, 100, 1024, MAX_RULES]
FLOOR = os.path.join(HERE, "xdp_pass.bpf.o")
PIN = pin_path("rules")


def filler(i: int) -> tuple[str, str]:
    """Rule i that never matches the probes: (pyxdp text, nft rule)."""
    net = f"10.{i >> 8}.{i & 255}.0/24"
    return f"deny proto tcp from {net} to any port {i + 1}", f"ip saddr {net} tcp dport {i + 1} drop"


def pyxdp_rules(n: int, last: str) -> list[str]:
    return [filler(i)[0] for i in range(n - 1)] + [last]


def per_packet(repeat: int, rounds: int) -> str:
    probe = P.udp4("192.0.2.1", 53)
    last = "deny proto udp from 192.0.2.0/24 to any port 53"
    shutil.rmtree(PIN, ignore_errors=True)
    floor = BpfObject(FLOOR)
    peers = {"xdp-filter dny_all, 100k addresses + 4 ports": XdpFilterPeer("xdpfilt_dny_all.o", table_nets()),
             "xdp-filter dny_all, 1,024 addresses + 4 ports":
                 XdpFilterPeer("xdpfilt_dny_all.o", [(10 << 24) + (i << 8) for i in range(1024)])}
    try:
        floor.load()
        floor_prog = floor.program()
        results: dict[str, list[float]] = {}
        with Filter.open(PIN, create=True, rules=MAX_RULES) as flt:
            prog = flt.program()
            install_s: dict[int, float] = {}
            for _ in range(rounds):
                results.setdefault("XDP_PASS only (floor)", []).append(
                    floor_prog.test_run(probe, repeat=repeat).duration_ns)
                for label, peer in peers.items():
                    results.setdefault(label, []).append(peer.prog.test_run(probe, repeat=repeat).duration_ns)
                flt.replace_rules([])
                results.setdefault("no rules", []).append(prog.test_run(probe, repeat=repeat).duration_ns)
                for n in COUNTS:
                    rules = [parse_rule(t) for t in pyxdp_rules(n, last)]
                    t = time.perf_counter()
                    flt.replace_rules(rules)
                    install_s.setdefault(n, time.perf_counter() - t)
                    res = prog.test_run(probe, repeat=repeat)
                    assert res.retval == 1, "the last rule must drop the probe"  # XDP_DROP
                    results.setdefault(f"{n} rules", []).append(res.duration_ns)
            prog.close()
        floor_prog.close()
    finally:
        for peer in peers.values():
            peer.close()
        floor.close()
        shutil.rmtree(PIN, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    base = med["no rules"]
    ref = med["xdp-filter dny_all, 100k addresses + 4 ports"]
    lines = [f"Probe: 64-byte UDP/IPv4 matching only the last rule; BPF_PROG_TEST_RUN repeat={repeat}, median of "
             f"{rounds} interleaved rounds; one state with room for {MAX_RULES} rules. Rules 1..N-1: "
             "`deny proto tcp from 10.A.B.0/24 to any port P` (distinct), rule N: "
             f"`{last}`. xdp-filter: its object with the .5 address of each /24 and ports 22, 80, 443, 53, "
             "in the same rounds.\n",
             "| program | ns/packet | vs xdp-filter (100k) | minus no-rule cost | install (replace_rules) |",
             "|---|---:|---:|---:|---:|"]
    for name, ns in med.items():
        n = int(name.split()[0]) if name[0].isdigit() else 0
        inst = f"{install_s[n] * 1000:.0f} ms" if n else ""
        lines.append(f"| {name} | {ns:.0f} | {ns / ref:.2f} | {ns - base:+.0f} | {inst} |")
    lo, hi = COUNTS[-2], COUNTS[-1]
    per_word = (med[f"{hi} rules"] - med[f"{lo} rules"]) / ((hi - lo) // 64)
    lines.append(f"\nEach further 64 rules ({lo} -> {hi}) add {per_word:.2f} ns; the rest of the rule step "
                 f"(the call, the field lookups) is the {COUNTS[0]}-rule row minus the no-rule row.")
    return "\n".join(lines)


def nft_script(n: int) -> str:
    rules = [filler(i)[1] for i in range(n - 1)] + ["ip saddr 10.66.0.1 udp dport 9 drop"]
    head = "table netdev f {\n  chain c {\n    type filter hook ingress device vb priority 0;\n"
    return head + "".join(f"    {r}\n" for r in rules) + "  }\n}\n"


def wire_rates(seconds: float, rounds: int) -> str:
    rates: dict[tuple[str, int], list[float]] = {}
    bin_ = wire.BIN
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "udp.cfg")
        rules_file = os.path.join(tmp, "rules.toml")
        nft_file = os.path.join(tmp, "rules.nft")
        try:
            for _ in range(rounds):
                for n in COUNTS:
                    for who in ("nft netdev ingress", "pyxdp native"):
                        mac = wire.make_pair()
                        with open(conf, "w") as fh:
                            fh.write("{ eth(da=" + mac + ", sa=02:00:00:00:00:01), ipv4(saddr=10.66.0.1, "
                                     "daddr=10.66.0.2, ttl=64), udp(sport=40000, dport=9), fill(0x00, 18) }\n")
                        if who.startswith("nft"):
                            with open(nft_file, "w") as fh:
                                fh.write(nft_script(n))
                            wire.sh("ip", "netns", "exec", wire.B, "nft", "-f", nft_file)
                        else:
                            rules = pyxdp_rules(n, "deny proto udp from 10.66.0.1 to any port 9")
                            with open(rules_file, "w") as fh:
                                fh.write("rules = [\n" + "".join(f'  "{r}",\n' for r in rules) + "]\n")
                            wire.sh(bin_, "--pin-dir", wire.PIN, "attach", "vb", "--netns", wire.B, "--mode",
                                    "native", "--rules", str(MAX_RULES))
                            wire.sh(bin_, "--pin-dir", wire.PIN, "apply", rules_file)
                        rates.setdefault((who, n), []).append(wire.run_once(conf, seconds))
                        wire.drop_pair()
        finally:
            wire.drop_pair()
    lines = [f"trafgen, 64-byte UDP on one CPU through a veth (as in wire.py); {seconds:.0f} s per run, median of "
             f"{rounds} rounds; the flood matches the last rule.\n",
             "| rules | nft netdev ingress frames/s | pyxdp native frames/s | pyxdp / nft | CPU ns/frame nft | "
             "CPU ns/frame pyxdp |", "|---|---:|---:|---:|---:|---:|"]
    for n in COUNTS:
        nft = statistics.median(rates[("nft netdev ingress", n)])
        px = statistics.median(rates[("pyxdp native", n)])
        lines.append(f"| {n} | {nft:,.0f} | {px:,.0f} | {px / nft:.2f} | {1e9 / nft:,.0f} | {1e9 / px:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-wire", action="store_true")
    args = ap.parse_args()
    repeat, rounds, wrounds, secs = (100_000, 3, 1, 2.0) if args.quick else (1_000_000, 5, 3, 3.0)
    print("## Rules: per-packet cost (test run)\n")
    print(per_packet(repeat, rounds))
    if args.no_wire:
        return
    print("\n## Rules on the wire: pyxdp against nftables with the same rules\n")
    print(wire_rates(secs, wrounds))


if __name__ == "__main__":
    main()
