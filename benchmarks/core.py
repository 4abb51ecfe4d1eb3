"""Core benchmarks for the filter (issue: pyxdp core). Run as root from the top
of the tree, after scripts/setup.sh --test (it needs xdp-tools for the peer):

    sudo .venv/bin/python benchmarks/core.py            # about 3 minutes
    sudo .venv/bin/python benchmarks/core.py --quick    # fewer repeats

It prints Markdown tables (medians, ratios against baselines measured in the
same run) that BENCHMARKS.md quotes. Everything it creates (pin dirs under
/sys/fs/bpf/pyxdp-bench*, a veth pair pxbench0/pxbench1, temp files) is
removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))

import packets as P  # noqa: E402

from pyxdp import Entry, Filter  # noqa: E402
from pyxdp.bpf import BpfObject, Program  # noqa: E402
from pyxdp.entries import Prefix  # noqa: E402
from pyxdp.layout import Action  # noqa: E402
from pyxdp.libbpf import num_possible_cpus  # noqa: E402

XDPFILTER_DIR = "/usr/lib/x86_64-linux-gnu/bpf"
FLOOR = os.path.join(HERE, "xdp_pass.bpf.o")
BIN = os.path.join(os.path.dirname(sys.executable), "pyxdp-load")
N_PREFIXES = 100_000


def median(xs: list[float]) -> float:
    return statistics.median(xs)


@contextmanager
def scratch_pin(name: str) -> Iterator[str]:
    path = f"/sys/fs/bpf/pyxdp-bench-{name}"
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def table_addresses() -> list[int]:
    """100,000 /24 networks 10.a.b.0 with b even (every other /24 is a hole)."""
    out = []
    for i in range(N_PREFIXES):
        out.append((10 << 24) | ((i >> 7) << 16) | ((i & 127) * 2 << 8))
    return out


def other_lengths() -> list[Entry]:
    """10,000 prefixes spread over 24 lengths other than /24, inside
    172.16.0.0/12 and 100.64.0.0/10 (away from the /24 table and the probes)."""
    out = []
    lengths = [n for n in range(8, 33) if n != 24]
    for i in range(10_000):
        plen = lengths[i % len(lengths)]
        base = (172 << 24) | (16 << 16) if i % 2 else (100 << 24) | (64 << 16)
        addr = (base + i * 4099 * (1 << max(0, 32 - plen - 4))) & ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF)
        out.append(Entry(Prefix(4, struct.pack("!I", addr), plen), Action.DENY))
    return list({e.target: e for e in out}.values())


def packets() -> dict[str, bytes]:
    return {
        "in table": P.udp4("10.3.84.5", 53),  # 10.3.84.0/24 is in the table
        "in a /24 hole": P.udp4("10.3.85.5", 53),  # 10.3.85.0/24 is not, its neighbours are
        "far away": P.udp4("203.0.113.5", 53),
    }


class XdpFilterPeer:
    """One of xdp-tools' precompiled xdp-filter objects, its maps private,
    loaded with comparable entries: the .5 address of every /24 in the table
    (xdp-filter matches exact addresses only) and four ports."""

    def __init__(self, name: str, pin: str, addrs: list[int]) -> None:
        self.obj = BpfObject(os.path.join(XDPFILTER_DIR, name), pin_root=pin)
        for m in self.obj.map_names:
            if not m.endswith((".rodata", ".bss", ".data")):
                self.obj.private_map(m)
        self.obj.set_max_entries("filter_ipv4", len(addrs) + 16)
        self.obj.load()
        self.prog = self.obj.program()
        ncpu = num_possible_cpus()
        with self.obj.map("filter_ipv4") as m:
            val = struct.pack("=Q", 1) * ncpu  # FLAG_SRC
            m.update_batch(b"".join(struct.pack("!I", a | 5) for a in addrs), val * len(addrs))
        with self.obj.map("filter_ports") as m:
            for port in (22, 80, 443, 8080):
                m.update(struct.pack("=I", port), struct.pack("=Q", 0xF) * ncpu)

    def close(self) -> None:
        self.prog.close()
        self.obj.close()


def per_packet(repeat: int, rounds: int) -> str:
    addrs = table_addresses()
    pkts = packets()
    progs: dict[str, Program] = {}
    keep: list[Callable[[], None]] = []
    lines = []
    with scratch_pin("pp") as pin, scratch_pin("xf-dny") as pin_dny, scratch_pin("xf-alw") as pin_alw, \
            scratch_pin("empty") as pin_empty, scratch_pin("mixed") as pin_mixed:
        floor = BpfObject(FLOOR)
        floor.load()
        progs["XDP_PASS only (floor)"] = floor.program()
        keep.append(floor.close)
        for label, obj, p in (("xdp-filter xdpfilt_dny_all.o", "xdpfilt_dny_all.o", pin_dny),
                              ("xdp-filter xdpfilt_alw_all.o", "xdpfilt_alw_all.o", pin_alw)):
            peer = XdpFilterPeer(obj, p, addrs)
            progs[label] = peer.prog
            keep.append(peer.close)
        empty = Filter.open(pin_empty, create=True)
        progs["pyxdp, no entries"] = empty.program()
        keep.append(empty.close)
        flt = Filter.open(pin, create=True)
        t = time.perf_counter()
        flt.add(Entry(Prefix(4, struct.pack("!I", a), 24), Action.DENY) for a in addrs)
        load_s = time.perf_counter() - t
        flt.deny("22/tcp", "80/tcp", "443/tcp", "53/udp")
        progs["pyxdp, 100k /24 + 4 ports"] = flt.program()
        keep.append(flt.close)
        mixed = Filter.open(pin_mixed, create=True)
        mixed.add(Entry(Prefix(4, struct.pack("!I", a), 24), Action.DENY) for a in addrs)
        mixed.add(other_lengths())
        mixed.deny("22/tcp", "80/tcp", "443/tcp", "53/udp")
        cfg = mixed.config()
        in_trie = sum(1 for s in mixed.entries() if isinstance(s.target, Prefix) and s.target.plen not in cfg.lens4)
        mixed_note = f"hashed lengths {list(cfg.lens4)}, {in_trie} entries in the trie"
        progs["pyxdp, the same + 10k over 24 other lengths"] = mixed.program()
        keep.append(mixed.close)

        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(rounds):  # interleaved, so drift hits every program alike
            for pname, prog in progs.items():
                for kname, pkt in pkts.items():
                    results.setdefault((pname, kname), []).append(prog.test_run(pkt, repeat=repeat).duration_ns)
        for prog in progs.values():
            prog.close()
        for close in keep:
            close()

    med = {k: median(v) for k, v in results.items()}
    ref = "xdp-filter xdpfilt_dny_all.o"
    floor_name = "XDP_PASS only (floor)"
    lines.append(f"64-byte UDP/IPv4 packets; BPF_PROG_TEST_RUN, repeat={repeat}, median of {rounds} interleaved "
                 "rounds; ns/packet as the kernel reports it.\n")
    lines.append("| program | " + " | ".join(pkts) + " | vs xdp-filter dny_all | vs floor |")
    lines.append("|---|" + "---:|" * (len(pkts) + 2))
    for pname in progs:
        cells = [f"{med[(pname, k)]:.0f}" for k in pkts]
        vs_ref = " / ".join(f"{med[(pname, k)] / med[(ref, k)]:.2f}" for k in pkts)
        vs_floor = " / ".join(f"{med[(pname, k)] / med[(floor_name, k)]:.1f}" for k in pkts)
        lines.append(f"| {pname} | " + " | ".join(cells) + f" | {vs_ref} | {vs_floor} |")
    lines.append(f"\n(The 100,000 prefixes went in through the API in {load_s:.2f} s. Mixed table: {mixed_note}.)")
    return "\n".join(lines)


def timed(cmd: list[str], runs: int, env: dict[str, str] | None = None) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        out.append(time.perf_counter() - t)
    return out


XDPFILTER_STATE = "/sys/fs/bpf/xdp-filter"


def refuse_if_xdpfilter_in_use() -> None:
    """xdp-filter keeps one set of pinned maps for every interface it runs on;
    loading it here, or `xdp-filter ip`, would join a filter the host runs."""
    if os.path.exists(XDPFILTER_STATE):
        sys.exit(f"{XDPFILTER_STATE} exists: xdp-filter is in use on this host; not benchmarking against it")


def control_plane(runs: int) -> str:
    refuse_if_xdpfilter_in_use()
    lines = []
    subprocess.run(["ip", "link", "del", "pxbench0"], capture_output=True)
    subprocess.run(["ip", "link", "add", "pxbench0", "type", "veth", "peer", "name", "pxbench1"], check=True)
    libxdp_dir = "/sys/fs/bpf/xdp"  # xdp-filter (libxdp) pins its dispatcher state here
    libxdp_existed = os.path.exists(libxdp_dir)
    try:
        for dev in ("pxbench0", "pxbench1"):
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)

        # one entry per process: pyxdp, xdp-filter (a C binary, loaded on the peer), bare Python
        subprocess.run(["xdp-filter", "load", "pxbench1", "--mode", "native"], check=True)
        py: list[float] = []
        deny: list[float] = []
        xfip: list[float] = []
        with scratch_pin("cp") as pin:
            os.rmdir(pin)
            subprocess.run([BIN, "--pin-dir", pin, "deny", "-q", "from", "192.0.2.0/24"], check=True)
            for i in range(runs):  # interleaved
                addr = f"198.51.{i % 256}.{i // 256}"
                py += timed([sys.executable, "-c", "pass"], 1)
                deny += timed([BIN, "--pin-dir", pin, "deny", "-q", "from", addr], 1)
                xfip += timed(["xdp-filter", "ip", "--mode", "src", addr], 1)
        subprocess.run(["xdp-filter", "unload", "pxbench1"], check=True, stdout=subprocess.DEVNULL)
        lines.append(f"Wall time of one process adding one source entry, median of {runs} interleaved runs.\n")
        lines.append("| command | median ms | vs `python -c pass` | vs `xdp-filter ip` |")
        lines.append("|---|---:|---:|---:|")
        for label, xs in (("`python -c pass` (same interpreter)", py), ("`pyxdp-load deny from X`", deny),
                          ("`xdp-filter ip --mode src X` (C)", xfip)):
            lines.append(f"| {label} | {median(xs) * 1e3:.1f} | {median(xs) / median(py):.2f} | "
                         f"{median(xs) / median(xfip):.1f} |")

        att: list[float] = []
        xf: list[float] = []
        with scratch_pin("att") as pin:
            os.rmdir(pin)
            for _ in range(max(5, runs // 3)):
                att += timed([BIN, "--pin-dir", pin, "attach", "pxbench0", "--mode", "native"], 1)
                subprocess.run([BIN, "--pin-dir", pin, "detach", "pxbench0"], check=True, stdout=subprocess.DEVNULL)
                xf += timed(["xdp-filter", "load", "pxbench0", "--mode", "native"], 1)
                subprocess.run(["xdp-filter", "unload", "pxbench0"], check=True, stdout=subprocess.DEVNULL)
        lines.append("\nProcess start to attached (native mode, veth), fresh state each time; median of "
                     f"{len(att)} interleaved runs.\n")
        lines.append("| command | median ms | ratio to xdp-filter |")
        lines.append("|---|---:|---:|")
        lines.append(f"| `xdp-filter load pxbench0` | {median(xf) * 1e3:.0f} | 1.00 |")
        lines.append(f"| `pyxdp-load attach pxbench0` | {median(att) * 1e3:.0f} | {median(att) / median(xf):.2f} |")
    finally:
        for dev in ("pxbench0", "pxbench1"):
            subprocess.run(["xdp-filter", "unload", dev], capture_output=True)
        subprocess.run(["ip", "link", "del", "pxbench0"], capture_output=True)
        if not libxdp_existed:
            shutil.rmtree(libxdp_dir, ignore_errors=True)
    return "\n".join(lines)


def bulk() -> str:
    lines = []
    with tempfile.TemporaryDirectory() as tmp, scratch_pin("bulk") as pin:
        os.rmdir(pin)
        path = os.path.join(tmp, "million.txt")
        with open(path, "w") as fh:
            for i in range(1_000_000):
                fh.write(f"{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24\n")
        t = time.perf_counter()
        subprocess.run([BIN, "--pin-dir", pin, "deny", "-q", "--file", path], check=True)
        cli_s = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([BIN, "--pin-dir", pin, "deny", "-q", "--file", path], check=True)
        again_s = time.perf_counter() - t
        with Filter.open(pin, lock=False) as f:
            n = sum(1 for _ in f.map("src4").keys_fast())
    lines.append("| operation | wall s |")
    lines.append("|---|---:|")
    lines.append(f"| `pyxdp-load deny --file` with 1,000,000 new /24 prefixes (process start to exit) | {cli_s:.2f} |")
    lines.append(f"| the same file again (every entry replaced in place) | {again_s:.2f} |")
    lines.append(f"\nEntries in the map afterwards: {n:,}.")
    return "\n".join(lines)


def environment() -> str:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "n/a"

    cpu = "n/a"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    libbpf = os.path.realpath(f"/usr/lib/{platform.machine()}-linux-gnu/libbpf.so.1").rsplit(".so.", 1)[-1]
    return "\n".join([
        f"- date: {time.strftime('%Y-%m-%d')}; host: {socket.gethostname()}",
        f"- kernel {platform.release()}; {os.cpu_count()} CPUs: {cpu}",
        f"- libbpf {libbpf}; {out(['clang-19', '--version'])}; "
        f"xdp-tools {out(['dpkg-query', '-W', '-f', '${Version}', 'xdp-tools'])}",
        f"- Python {platform.python_version()}",
    ])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    repeat, rounds, runs = (200_000, 3, 10) if args.quick else (1_000_000, 7, 30)
    print("## Environment\n")
    print(environment())
    print("\n## Per-packet cost\n")
    print(per_packet(repeat, rounds))
    print("\n## Control plane\n")
    print(control_plane(runs))
    print("\n## Bulk load\n")
    print(bulk())


if __name__ == "__main__":
    main()
