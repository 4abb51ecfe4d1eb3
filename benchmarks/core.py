"""Core benchmarks for the filter (issue 8's "Speed" targets). Run as root from
the top of the tree, after scripts/setup.sh --bench (xdp-tools for the peer):

    sudo .venv/bin/python benchmarks/core.py            # about 2 minutes
    sudo .venv/bin/python benchmarks/core.py --quick    # fewer repeats

It prints Markdown tables (medians, ratios against baselines measured in the
same run, interleaved) that BENCHMARKS.md quotes:

- per packet (BPF_PROG_TEST_RUN): ``deny from @banned`` with 100,000 /24s in
  the set and four port rules, then the same with 10,000 more prefixes over 24
  other lengths, against xdp-filter's xdpfilt_dny_all.o holding comparable
  exact addresses and 4 ports, and the XDP_PASS floor;
- the control plane: ``pyxdp-load ban X`` against ``python -c pass`` and
  ``xdp-filter ip``, and process start to attached against ``xdp-filter
  load``. This part runs in a private mount namespace with its own bpffs on
  /sys/fs/bpf (``unshare -m``), so xdp-filter's pinned state is the
  script's own and never a filter the host runs.

Everything it creates (pin dirs /sys/fs/bpf/pyxdp-bench-<pid>-*, a veth pair
pxbench0/pxbench1, temp files) is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
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

from helpers import packets as P  # noqa: E402

from pyxdp import Filter, Prefix  # noqa: E402
from pyxdp.kernel.bpf import BpfObject, Program  # noqa: E402
from pyxdp.kernel.libbpf import num_possible_cpus  # noqa: E402

XDPFILTER_DIR = "/usr/lib/x86_64-linux-gnu/bpf"
FLOOR = os.path.join(HERE, "xdp_pass.bpf.o")
BIN = os.path.join(os.path.dirname(sys.executable), "pyxdp-load")
N_PREFIXES = 100_000
PORT_RULES = ("allow 22/tcp", "allow 80/tcp", "allow 443/tcp", "deny 53/udp")
XF_PORTS = (22, 80, 443, 53)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def pin_path(name: str) -> str:
    return f"/sys/fs/bpf/pyxdp-bench-{os.getpid()}-{name}"


@contextmanager
def scratch_pin(name: str, make: bool = True) -> Iterator[str]:
    """A pin directory /sys/fs/bpf/pyxdp-bench-<pid>-NAME, removed afterwards.
    ``make``: create the (empty) directory; otherwise pyxdp makes it."""
    path = pin_path(name)
    shutil.rmtree(path, ignore_errors=True)
    if make:
        os.makedirs(path, mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def table_nets() -> list[int]:
    """100,000 /24 networks 10.0.0.0 + (i // 128) /16s + 2 * (i % 128) /24s:
    every other /24 is in the set, so a /24 "hole" sits between two elements
    (10.0.0.0/24 .. 13.13.62.0/24)."""
    return [(10 << 24) + ((i >> 7) << 16) + ((i & 127) * 2 << 8) for i in range(N_PREFIXES)]


def table_prefixes() -> list[Prefix]:
    return [Prefix(4, struct.pack("!I", a), 24) for a in table_nets()]


def other_lengths(n: int = 10_000) -> list[Prefix]:
    """``n`` distinct prefixes over the 24 lengths /8../32 other than /24
    (round robin, as many per length as the length allows), none covering the
    table (10.0.0.0-13.255.255.255) or the far probe (203.0.113.5)."""
    rng = random.Random(8)
    lengths = [p for p in range(8, 33) if p != 24]
    out: dict[tuple[int, int], Prefix] = {}
    i = 0
    while len(out) < n:
        plen = lengths[i % len(lengths)]
        i += 1
        first = rng.choice([o for o in range(1, 224) if o not in (10, 11, 12, 13, 203, 127)])
        addr = (first << 24 | rng.getrandbits(24)) & ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF)
        out.setdefault((addr, plen), Prefix(4, struct.pack("!I", addr), plen))
        if i > 100 * n:
            break
    return list(out.values())


def packets() -> dict[str, bytes]:
    return {
        "in the set": P.udp4("10.3.84.5", 53),  # 10.3.84.0/24 is in the set
        "in a /24 hole": P.udp4("10.3.85.5", 53),  # 10.3.85.0/24 is not, its neighbours are
        "far away": P.udp4("203.0.113.5", 53),
    }


def private_maps(obj: BpfObject) -> BpfObject:
    """``obj`` with every map of its own private: made for this process at
    load, nothing pinned or reused (its .rodata/.bss/.data stay as libbpf
    makes them)."""
    for m in obj.map_names:
        if not m.endswith((".rodata", ".bss", ".data")):
            obj.private_map(m)
    return obj


class XdpFilterPeer:
    """One of xdp-tools' precompiled xdp-filter objects, its maps private (in
    this process only, nothing pinned), loaded with comparable entries: the .5
    address of every /24 of the set (xdp-filter matches exact addresses only)
    and four ports."""

    def __init__(self, name: str, addrs: list[int], ports: tuple[int, ...] = XF_PORTS) -> None:
        self.obj = private_maps(BpfObject(os.path.join(XDPFILTER_DIR, name)))
        self.obj.set_max_entries("filter_ipv4", max(len(addrs), 1) + 16)
        self.obj.load()
        self.prog = self.obj.program()
        ncpu = num_possible_cpus()
        with self.obj.map("filter_ipv4") as m:
            val = struct.pack("=Q", 1) * ncpu  # FLAG_SRC
            m.update_batch(b"".join(struct.pack("!I", a | 5) for a in addrs), val * len(addrs))
        with self.obj.map("filter_ports") as m:
            for port in ports:
                m.update(struct.pack("=I", port), struct.pack("=Q", 0xF) * ncpu)  # tcp+udp, src+dst

    def close(self) -> None:
        self.prog.close()
        self.obj.close()


def banned_filter(pin: str, prefixes: list[Prefix], port_rules: bool = True) -> tuple[Filter, float]:
    """A state with ``deny from @banned`` (the set holding ``prefixes``) as
    rule 1, then the four port rules; returns it and the set_add time."""
    flt = Filter.open(pin, create=True)
    t = time.perf_counter()
    flt.ban(prefixes)
    took = time.perf_counter() - t
    if port_rules:
        for r in PORT_RULES:
            flt.add_rule(r)
    return flt, took


def set_layout(flt: Filter, name: str = "banned") -> str:
    """Which IPv4 lengths the set's hash serves, and whether it uses the trie."""
    from pyxdp.store import sets as S

    si = S.info(flt.state, S.lookup_name(flt.state, name))
    lens = sorted(n - 1 for n in si.lens4 if n)
    return f"hashed /{', /'.join(map(str, lens))}; trie {'on' if si.trie4 else 'off'}"


def interleaved(progs: dict[str, Program], pkts: dict[str, bytes], repeat: int,
                rounds: int) -> dict[tuple[str, str], float]:
    """Median ns of every program on every packet, rounds interleaved so that
    drift hits every program alike."""
    res: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for pname, prog in progs.items():
            for kname, pkt in pkts.items():
                res.setdefault((pname, kname), []).append(prog.test_run(pkt, repeat=repeat).duration_ns)
    return {k: median(v) for k, v in res.items()}


def per_packet(repeat: int, rounds: int) -> str:
    nets = table_nets()
    pkts = packets()
    progs: dict[str, Program] = {}
    keep: list[Callable[[], None]] = []
    lines = []
    notes = []
    try:
        floor = BpfObject(FLOOR)
        floor.load()
        progs["XDP_PASS only (floor)"] = floor.program()
        keep.append(floor.close)
        for label, obj in (("xdp-filter xdpfilt_dny_all.o", "xdpfilt_dny_all.o"),
                           ("xdp-filter xdpfilt_alw_all.o", "xdpfilt_alw_all.o")):
            peer = XdpFilterPeer(obj, nets)
            progs[label] = peer.prog
            keep.append(peer.close)
        table = table_prefixes()
        mixed_extra = other_lengths()
        for label, name, prefixes, ports in (
                ("pyxdp, no rules", "none", None, False),
                ("pyxdp, no rules, connection state off", "none-off", None, False),
                ("pyxdp, the 4 port rules only", "ports", None, True),
                ("pyxdp, `deny from @banned` (100k /24) + 4 port rules", "banned", table, True),
                ("pyxdp, the same, connection state off", "banned-off", table, True),
                (f"pyxdp, the same + {len(mixed_extra):,} over 24 other lengths", "mixed", table + mixed_extra,
                 True)):
            pin = pin_path(name)
            keep.append(lambda pin=pin: shutil.rmtree(pin, ignore_errors=True))
            if prefixes is None:
                flt = Filter.open(pin, create=True)
                if ports:
                    for r in PORT_RULES:
                        flt.add_rule(r)
            else:
                flt, took = banned_filter(pin, prefixes, ports)
                notes.append(f"{label}: {len(prefixes):,} elements added through `Filter.ban` in {took:.2f} s; "
                             f"{set_layout(flt)}")
            if name.endswith("-off"):
                flt.set_established(False)
            progs[label] = flt.program()
            keep.insert(0, flt.close)
        med = interleaved(progs, pkts, repeat, rounds)
        for pname in progs:  # the rules decide as the table says: every probe dropped (rule 1 or 'deny 53/udp')
            if "port rules" in pname:
                assert all(progs[pname].test_run(p).retval == 1 for p in pkts.values()), pname
    finally:
        for prog in progs.values():
            prog.close()
        for close in keep:
            close()

    ref = "xdp-filter xdpfilt_dny_all.o"
    floor_name = "XDP_PASS only (floor)"
    lines.append(f"64-byte UDP/IPv4 packets to port 53; BPF_PROG_TEST_RUN, repeat={repeat}, median of {rounds} "
                 "interleaved rounds; ns/packet as the kernel reports it. Rules: `deny from @banned`, "
                 f"{', '.join(f'`{r}`' for r in PORT_RULES)}. xdp-filter: the .5 address of each /24 of the set "
                 f"and ports {', '.join(map(str, XF_PORTS))}.\n")
    lines.append("| program | " + " | ".join(pkts) + " | vs xdp-filter dny_all | vs floor |")
    lines.append("|---|" + "---:|" * (len(pkts) + 2))
    for pname in progs:
        cells = [f"{med[(pname, k)]:.0f}" for k in pkts]
        vs_ref = " / ".join(f"{med[(pname, k)] / med[(ref, k)]:.2f}" for k in pkts)
        vs_floor = " / ".join(f"{med[(pname, k)] / med[(floor_name, k)]:.1f}" for k in pkts)
        lines.append(f"| {pname} | " + " | ".join(cells) + f" | {vs_ref} | {vs_floor} |")
    lines.append("")
    lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines)


def timed(cmd: list[str], runs: int = 1, env: dict[str, str] | None = None) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        out.append(time.perf_counter() - t)
    return out


def in_private_bpffs() -> bool:
    return os.environ.get("PYXDP_BENCH_PRIVATE_BPFFS") == str(os.getpid())


def run_private(args: list[str]) -> str:
    """Run this script's ``args`` in a private mount namespace with a fresh
    bpffs on /sys/fs/bpf (host pins invisible, ours gone when it exits)."""
    env = dict(os.environ, PYXDP_BENCH_PRIVATE_BPFFS="")
    script = ("mount --make-rprivate / && mount -t bpf bpf /sys/fs/bpf && "
              "PYXDP_BENCH_PRIVATE_BPFFS=$$ exec \"$@\"")
    res = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", sys.executable, os.path.abspath(__file__),
                          *args], env=env, check=True, stdout=subprocess.PIPE, text=True)
    return res.stdout


def control_plane(runs: int) -> str:
    assert in_private_bpffs(), "run through run_private()"
    lines = []
    subprocess.run(["ip", "link", "del", "pxbench0"], capture_output=True)
    subprocess.run(["ip", "link", "add", "pxbench0", "type", "veth", "peer", "name", "pxbench1"], check=True)
    # As installed by pip, pyxdp's modules come with bytecode; a source tree run
    # with PYTHONDONTWRITEBYTECODE=1 compiles every module at every start
    # (~25 ms here). The headline rows cache bytecode in a temp dir (never in
    # the tree); one row shows the uncached cost.
    pycache = tempfile.mkdtemp(prefix="pyxdp-bench-pyc-")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = pycache
    nocache = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    nocache.pop("PYTHONPYCACHEPREFIX", None)
    try:
        for dev in ("pxbench0", "pxbench1"):
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)

        # one ban per process: pyxdp (small set, 100k set), xdp-filter (a C binary, loaded on the peer), Python
        subprocess.run(["xdp-filter", "load", "pxbench1", "--mode", "native"], check=True)
        py: list[float] = []
        ban: list[float] = []
        ban_big: list[float] = []
        xfip: list[float] = []
        with scratch_pin("cp", make=False) as pin, scratch_pin("cp-big", make=False) as pin_big:
            subprocess.run([BIN, "--pin-dir", pin, "--create", "ban", "-q", "192.0.2.0/24"], check=True,
                           stdout=subprocess.DEVNULL, env=env)  # also fills the bytecode cache
            flt, _ = banned_filter(pin_big, table_prefixes(), port_rules=True)
            flt.close()
            ban_nc: list[float] = []
            for i in range(runs):  # interleaved
                addr = f"198.51.{i % 256}.{i // 256 + 1}"
                py += timed([sys.executable, "-c", "pass"], env=env)
                ban += timed([BIN, "--pin-dir", pin, "ban", "-q", addr], env=env)
                ban_big += timed([BIN, "--pin-dir", pin_big, "ban", "-q", addr], env=env)
                ban_nc += timed([BIN, "--pin-dir", pin, "ban", "-q", f"198.18.{i % 256}.{i // 256 + 1}"],
                                env=nocache)
                xfip += timed(["xdp-filter", "ip", "--mode", "src", addr])
        subprocess.run(["xdp-filter", "unload", "pxbench1"], check=True, stdout=subprocess.DEVNULL)
        lines.append(f"Wall time of one process banning one address (exec to exit), median of {runs} interleaved "
                     "runs; Python bytecode cached (PYTHONPYCACHEPREFIX in a temp dir) as after `pip install`, "
                     "except in the row that says otherwise.\n")
        lines.append("| command | median ms | vs `python -c pass` | vs `xdp-filter ip` |")
        lines.append("|---|---:|---:|---:|")
        for label, xs in (("`python -c pass` (same interpreter)", py),
                          ("`pyxdp-load ban -q X` (set of a few elements)", ban),
                          ("`pyxdp-load ban -q X` (set of 100,000 /24s, 5 rules)", ban_big),
                          ("`pyxdp-load ban -q X` (few elements), no bytecode cache", ban_nc),
                          ("`xdp-filter ip --mode src X` (C)", xfip)):
            lines.append(f"| {label} | {median(xs) * 1e3:.1f} | {median(xs) / median(py):.2f} | "
                         f"{median(xs) / median(xfip):.1f} |")

        att: list[float] = []
        xf: list[float] = []
        with scratch_pin("att", make=False) as pin:
            for _ in range(max(5, runs // 3)):
                att += timed([BIN, "--pin-dir", pin, "attach", "pxbench0", "--mode", "native"], env=env)
                subprocess.run([BIN, "--pin-dir", pin, "detach", "pxbench0"], check=True, stdout=subprocess.DEVNULL)
                xf += timed(["xdp-filter", "load", "pxbench0", "--mode", "native"])
                subprocess.run(["xdp-filter", "unload", "pxbench0"], check=True, stdout=subprocess.DEVNULL)
        lines.append("\nProcess start to attached (native mode, veth), fresh state each time; median of "
                     f"{len(att)} interleaved runs.\n")
        lines.append("| command | median ms | ratio to xdp-filter |")
        lines.append("|---|---:|---:|")
        lines.append(f"| `xdp-filter load pxbench0` | {median(xf) * 1e3:.0f} | 1.00 |")
        lines.append(f"| `pyxdp-load attach pxbench0` | {median(att) * 1e3:.0f} | {median(att) / median(xf):.2f} |")
    finally:
        shutil.rmtree(pycache, ignore_errors=True)
        for dev in ("pxbench0", "pxbench1"):
            subprocess.run(["xdp-filter", "unload", dev], capture_output=True)
        subprocess.run(["ip", "link", "del", "pxbench0"], capture_output=True)
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
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return "\n".join([
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}; host: {socket.gethostname()}",
        f"- kernel {platform.release()}; {os.cpu_count()} CPUs: {cpu}; {mem:.0f} GiB",
        f"- libbpf {libbpf}; {out(['clang-19', '--version'])}; "
        f"xdp-tools {out(['dpkg-query', '-W', '-f', '${Version}', 'xdp-tools'])}",
        f"- Python {platform.python_version()}",
    ])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--section", choices=("all", "packet", "control"), default="all")
    args = ap.parse_args()
    repeat, rounds, runs = (200_000, 3, 10) if args.quick else (1_000_000, 7, 30)
    if args.section == "control":
        print(control_plane(runs))
        return
    print("## Environment\n")
    print(environment())
    print("\n## Per-packet cost\n")
    print(per_packet(repeat, rounds))
    if args.section == "all":
        print("\n## Control plane\n")
        print(run_private(["--section", "control"] + (["--quick"] if args.quick else [])).rstrip())


if __name__ == "__main__":
    main()
