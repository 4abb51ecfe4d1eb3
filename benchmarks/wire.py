"""The wire path (the benchmarks issue, part 2): a sender floods UDP over a
veth into a receiver namespace; who drops it, and at what cost.

trafgen (netsniff-ng, PF_PACKET TX ring) in namespace A sends 64-byte UDP
frames from 10.66.0.1 out of va, pinned to CPU 1. A veth delivers on the
sending CPU: the receiver's work (XDP, nftables, the stack) runs in the same
CPU's softirq, so that CPU is the bottleneck and the sender's share of it is
the same in every configuration. Reported: frames per second the receiver
took in and dropped (sender TX counter / time) and the CPU time per frame on
that CPU (1 s / rate), each as a ratio to nftables at netdev ingress.
Receiver softirq time alone cannot be told apart here: the kernel is built
without CONFIG_IRQ_TIME_ACCOUNTING, and a veth's receive work runs in the
sending task's context, so /proc/stat books it as the sender's system time.

Configurations, each on a fresh pair of namespaces: no filter (UDP to a closed
port: the stack answers nothing, rate-limited ICMP aside); pyxdp native and
generic (`ban 10.66.0.1`: `deny from @banned` and the set); pyxdp native with
8,191 rules that do not match and one that does (as benchmarks/rules.py);
each pyxdp native row again with the attached program replaced by
xdp_filter_fast (issue 18's fast paths: the ban list probed inline; with
8,192 rules only the call into finish is gone); nftables netdev ingress drop; nftables inet
raw-priority prerouting drop; iptables (Debian's iptables-nft) raw PREROUTING
drop. Run as root after scripts/setup.sh --bench:

    sudo .venv/bin/python benchmarks/wire.py [--seconds 3] [--rounds 3] [--only pyxdp]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
BIN = os.path.join(os.path.dirname(sys.executable), "pyxdp-load")
A, B = "pxwire-a", "pxwire-b"
PIN = f"/sys/fs/bpf/pyxdp-bench-{os.getpid()}-wire"


def sh(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=check).stdout


def make_pair() -> str:
    for ns in (A, B):
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", "pxw0", "netns", A, "type", "veth", "peer", "name", "pxw1", "netns", B)
    sh("ip", "-n", A, "link", "set", "pxw0", "name", "va")
    sh("ip", "-n", B, "link", "set", "pxw1", "name", "vb")
    sh("ip", "-n", A, "addr", "add", "10.66.0.1/24", "dev", "va")
    sh("ip", "-n", B, "addr", "add", "10.66.0.2/24", "dev", "vb")
    for ns, dev in ((A, "va"), (B, "vb")):
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    mac = re.search(r"link/ether (\S+)", sh("ip", "-n", B, "link", "show", "vb"))
    assert mac
    return mac.group(1)


def drop_pair() -> None:
    for ns in (A, B):
        sh("ip", "netns", "del", ns, check=False)
    shutil.rmtree(PIN, ignore_errors=True)


def rules_8192() -> None:
    """8,191 rules that never match the flood, then one that does (as benchmarks/rules.py)."""
    from rules import pyxdp_rules

    from pyxdp import Filter
    from pyxdp.model.rules import parse_rule

    with Filter.open(PIN) as flt:
        flt.replace_rules([parse_rule(t) for t in pyxdp_rules(8192, "deny proto udp from 10.66.0.1 to any port 9")])


def use_fast_program() -> None:
    """Replace the attached filter on vb, atomically, with xdp_filter_fast on
    the same state, with the fast paths the rule list has (the loader's
    choice of a program by shape, done here by hand)."""
    from pyxdp import Filter
    from pyxdp import layout as L
    from pyxdp.kernel.bpf import Program
    from pyxdp.kernel.xdp import Netlink
    from pyxdp.model.fastpath import fast_paths
    from pyxdp.store import objects as S

    with Filter.open(PIN) as flt:
        shape = int(fast_paths([r.rule for r in flt.rules()]) or L.Shape.PORT_RULES)  # the fast program in any case
    obj = S.open_object(PIN, shape=shape)
    try:
        name = S.filter_program(shape)
        obj.only_program(name)
        obj.load()
        with obj.program(name) as prog, Netlink(B) as nl:
            st = nl.state("vb")
            assert st.prog_id and st.mode is not None
            with Program.from_id(st.prog_id) as old:
                nl.attach("vb", prog.fd, st.mode, replace_fd=old.fd)
    finally:
        obj.close()


def setup(config: str) -> None:
    if config.startswith("pyxdp"):
        mode = "native" if "native" in config else "generic"
        big = "8,192 rules" in config
        sh(BIN, "--pin-dir", PIN, "attach", "vb", "--netns", B, "--mode", mode, *(["--rules", "8192"] if big else []))
        if big:
            rules_8192()
        else:
            sh(BIN, "--pin-dir", PIN, "ban", "-q", "10.66.0.1")  # 'deny from @banned' + the set
        if "fast" in config:
            use_fast_program()
    elif config == "nft netdev ingress":
        sh("ip", "netns", "exec", B, "nft", "add table netdev f; add chain netdev f c "
           "{ type filter hook ingress device vb priority 0 ; } ; add rule netdev f c ip saddr 10.66.0.1 drop")
    elif config == "nft inet prerouting (raw prio)":
        sh("ip", "netns", "exec", B, "nft", "add table inet f; add chain inet f c "
           "{ type filter hook prerouting priority raw ; } ; add rule inet f c ip saddr 10.66.0.1 drop")
    elif config == "iptables raw PREROUTING":
        sh("ip", "netns", "exec", B, "iptables", "-t", "raw", "-A", "PREROUTING", "-s", "10.66.0.1", "-j", "DROP")


def tx_packets() -> int:
    out = sh("ip", "-n", A, "-s", "link", "show", "va")
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("TX:"):
            return int(lines[i + 1].split()[1])
    raise RuntimeError("no TX counters")


def run_once(conf: str, seconds: float) -> float:
    before = tx_packets()
    t = time.perf_counter()
    res = subprocess.run(["ip", "netns", "exec", A, "timeout", "-s", "INT", str(seconds), "taskset", "-c", "1",
                          "trafgen", "--dev", "va", "--conf", conf, "--cpus", "1", "-q"],
                         capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t
    sent = tx_packets() - before
    if sent == 0:
        raise RuntimeError(f"trafgen sent nothing (exit {res.returncode}): {res.stderr.strip()[-300:]}")
    return sent / elapsed


CONFIGS = ["no filter", "pyxdp native", "pyxdp native, fast program", "pyxdp native, 8,192 rules",
           "pyxdp native, 8,192 rules, fast program", "pyxdp generic", "nft netdev ingress",
           "nft inet prerouting (raw prio)", "iptables raw PREROUTING"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", help="the configurations whose name contains this (nft netdev ingress always runs)")
    args = ap.parse_args()
    configs = [c for c in CONFIGS if not args.only or args.only in c or c == "nft netdev ingress"]
    rates: dict[str, list[float]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "udp.cfg")
        try:
            for _ in range(args.rounds):
                for c in configs:
                    mac = make_pair()
                    with open(conf, "w") as fh:
                        fh.write("{ eth(da=" + mac + ", sa=02:00:00:00:00:01), ipv4(saddr=10.66.0.1, "
                                 "daddr=10.66.0.2, ttl=64), udp(sport=40000, dport=9), fill(0x00, 18) }\n")
                    setup(c)
                    rates[c].append(run_once(conf, args.seconds))
                    drop_pair()
        finally:
            drop_pair()
    ref = statistics.median(rates["nft netdev ingress"])
    print(f"64-byte UDP frames from trafgen on one CPU through a veth; {args.seconds:.0f} s per run, median of "
          f"{args.rounds} rounds, configurations interleaved.\n")
    print("| receiver | frames/s | vs nft netdev | CPU ns/frame (sender + receiver) | vs nft netdev |")
    print("|---|---:|---:|---:|---:|")
    for c in configs:
        m = statistics.median(rates[c])
        print(f"| {c} | {m:,.0f} | {m / ref:.2f} | {1e9 / m:,.0f} | {ref / m:.2f} |")


if __name__ == "__main__":
    main()
