"""Load time and the expiry sweeper's cost (issue 8). Run as root from the top
of the tree after scripts/setup.sh --bench (clang-19 builds the walk program):

    sudo .venv/bin/python benchmarks/sweeper.py [--runs 5]

1. Load: `Filter.open(create=True)` (every map made and pinned, the sweeper's
   timer armed by its own small program) and `Filter.program()` (the filter
   program verified, loaded and pinned), in-process, median of --runs fresh
   states; the kernel's verified-instruction count of the program.
2. One sweep walk, timed exactly: benchmarks/sweep_walk.bpf.c is the
   shipped source plus a test-run program that makes the sweeper's walk
   (both element hashes, the sweeper's own callbacks) once. Loaded on a
   state's pinned maps, run with BPF_PROG_TEST_RUN (repeat 1): over 1,000,000
   elements none of which is due (the walk the sweeper makes when something
   else is due), and over 1,000,000 expired elements (the walk that removes
   them all; the kernel sweeper held off meanwhile through sweep_ctl.hold).
3. The real sweeper: 1,000,000 elements added with ttl 10 s; the sweeper's own
   record (walks, removed: `sweeper` map) polled until every element is gone;
   CPU time in softirq and system over that interval from /proc/stat (all
   CPUs), against an idle interval of the same length measured just before.
   With kernel.bpf_stats_enabled=1 (restored afterwards) the sweeper
   programs' run_time_ns is read too (it does not count timer callbacks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from core import pin_path, scratch_pin  # noqa: E402

import pyxdp.store.objects as S  # noqa: E402
from pyxdp import Filter, Prefix  # noqa: E402

N = 1_000_000
TTL = 10  # seconds: longer than the add itself, so that an idle reference fits before the expiry
TICK = os.sysconf("SC_CLK_TCK")


def prefixes(n: int = N) -> list[Prefix]:
    return [Prefix(4, struct.pack("!I", (16 << 24) + (i << 8)), 24) for i in range(n)]


def sweeper_record(flt: Filter) -> tuple[int, int, int]:
    """(next_due, walks, removed) from the sweeper's map value."""
    raw = flt.state.map("sweeper").lookup(bytes(4))
    assert raw is not None
    next_due, _seen, walks, removed = struct.unpack_from("=QQQQ", raw, 16)
    return next_due, walks, removed


def cpu_times() -> dict[str, float]:
    """Seconds of all CPUs in system, softirq and irq (/proc/stat)."""
    with open("/proc/stat") as fh:
        f = fh.readline().split()
    user, nice, system, idle, iowait, irq, softirq = (int(x) for x in f[1:8])
    return {"system": system / TICK, "softirq": softirq / TICK, "irq": irq / TICK, "user": user / TICK}


def build_walk(out_dir: str) -> str:
    out = os.path.join(out_dir, "sweep_walk.bpf.o")
    subprocess.run(["clang-19", "-O2", "-g", "-Wall", "-target", "bpf", "-D__TARGET_ARCH_x86", f"-I{TOP}", "-c",
                    os.path.join(HERE, "sweep_walk.bpf.c"), "-o", out], check=True)
    return out


def load_variant(path: str, pin: str, prog: str) -> tuple[object, object]:
    """``path`` (a build of the shipped source plus extras) on the maps pinned
    in ``pin``, sized as pyxdp sizes them; only program ``prog`` loaded."""
    saved = S.OBJECT_PATH
    S.OBJECT_PATH = path
    try:
        obj = S.open_object(pin)
    finally:
        S.OBJECT_PATH = saved
    obj.only_program(prog)
    obj.load()
    return obj, obj.program(prog)


def set_hold(flt: Filter, hold: int) -> None:
    m = flt.state.map("sweep_ctl")
    raw = m.lookup(bytes(4))
    assert raw is not None
    hint, seq, _hold = struct.unpack("=QII", raw)
    m.update(bytes(4), struct.pack("=QII", hint, seq, hold))


def load_times(runs: int) -> list[str]:
    mk: list[float] = []
    prog: list[float] = []
    info = {}
    for i in range(runs):
        pin = pin_path(f"load{i}")
        try:
            t = time.perf_counter()
            flt = Filter.open(pin, create=True)
            mk.append(time.perf_counter() - t)
            t = time.perf_counter()
            p = flt.program()
            prog.append(time.perf_counter() - t)
            if not info:
                out = subprocess.run(["bpftool", "prog", "show", "pinned", os.path.join(pin, S.PROG_PIN), "--json"],
                                     capture_output=True, text=True).stdout
                info = json.loads(out) if out else {}
            p.close()
            flt.close()
        finally:
            shutil.rmtree(pin, ignore_errors=True)
    return [f"In-process, median of {runs} fresh states.\n",
            "| step | ms |", "|---|---:|",
            f"| `Filter.open(create=True)`: maps made and pinned, sweeper armed | {statistics.median(mk) * 1e3:.0f} |",
            f"| `Filter.program()`: the filter program verified, loaded, pinned | "
            f"{statistics.median(prog) * 1e3:.0f} |",
            "", f"The program: {info.get('bytes_xlated', '?')} bytes xlated, {info.get('bytes_jited', '?')} jited."]


def walk_cost(tmp: str, runs: int) -> list[str]:
    obj_path = build_walk(tmp)
    rows = []
    with scratch_pin("walk", make=False) as pin:
        flt = Filter.open(pin, create=True)
        try:
            t = time.perf_counter()
            flt.set_add("perm", prefixes())
            add_s = time.perf_counter() - t
            obj, prog = load_variant(obj_path, pin, "sweep_walk_bench")
            try:
                live = []
                for _ in range(runs):
                    res = prog.test_run(bytes(64))
                    assert res.retval == 0, "nothing is due"
                    live.append(res.duration_ns)
                rows.append(("1,000,000 elements, none due (walked, none removed)", statistics.median(live), runs))
                flt.set_flush("perm")
                set_hold(flt, 1)  # the kernel sweeper stays off while we remove the expired ones ourselves
                try:
                    t = time.perf_counter()
                    flt.set_add("ttl", prefixes(), ttl=2)
                    ttl_s = time.perf_counter() - t
                    time.sleep(max(0.0, 2.3 - (time.perf_counter() - t)))
                    res = prog.test_run(bytes(64))
                    assert res.retval == N, f"removed {res.retval}"
                    rows.append(("1,000,000 expired elements (walked, all removed)", res.duration_ns, 1))
                    res = prog.test_run(bytes(64))
                    rows.append(("the hashes empty afterwards", res.duration_ns, 1))
                finally:
                    set_hold(flt, 0)
            finally:
                prog.close()
                obj.close()
        finally:
            flt.close()
    out = ["BPF_PROG_TEST_RUN of one sweep walk (benchmarks/sweep_walk.bpf.c) on a state's maps (capacity "
           "1,048,576 per family).\n", "| walk | ms | ns per element | runs |", "|---|---:|---:|---:|"]
    for label, ns, n in rows:
        per = f"{ns / N:.0f}" if "1,000,000" in label else ""
        out.append(f"| {label} | {ns / 1e6:.1f} | {per} | {n} |")
    out.append(f"\n(1,000,000 permanent elements added through the API in {add_s:.2f} s; with ttl 2 s in "
               f"{ttl_s:.2f} s.)")
    return out


def bpf_stats_run_time() -> dict[str, tuple[int, int]]:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True).stdout
    return {f"{p['id']}:{p.get('name', '')}": (p.get("run_time_ns", 0), p.get("run_cnt", 0))
            for p in json.loads(out or "[]") if p.get("name") in ("sweep_start", "xdp_filter")}


def real_sweeper() -> list[str]:
    with open("/proc/sys/kernel/bpf_stats_enabled") as fh:
        stats_was = fh.read().strip()
    lines = []
    with scratch_pin("sweep", make=False) as pin:
        flt = Filter.open(pin, create=True)
        try:
            subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=True)
            t = time.perf_counter()
            flt.set_add("ttl", prefixes(), ttl=TTL)
            add_s = time.perf_counter() - t
            expiry = t + TTL
            _due, walks0, removed0 = sweeper_record(flt)
            # idle reference: 2 s while nothing is due yet
            time.sleep(0.3)
            c0 = cpu_times()
            t_idle = time.perf_counter()
            time.sleep(2.0)
            ci = cpu_times()
            idle_s = time.perf_counter() - t_idle
            time.sleep(max(0.0, expiry - 0.3 - time.perf_counter()))
            cb = cpu_times()
            s0 = bpf_stats_run_time()
            t0 = time.perf_counter()
            deadline = t0 + 30
            while time.perf_counter() < deadline:
                _due, walks, removed = sweeper_record(flt)
                if removed - removed0 >= N:
                    break
                time.sleep(0.02)
            t_done = time.perf_counter() - expiry
            time.sleep(0.2)
            c2 = cpu_times()
            busy_s = time.perf_counter() - t0
            s1 = bpf_stats_run_time()
            _due, walks, removed = sweeper_record(flt)
            left = flt.sets()
        finally:
            subprocess.run(["sysctl", "-q", f"kernel.bpf_stats_enabled={stats_was}"], check=True)
            flt.close()
    lines.append(f"1,000,000 elements added with ttl {TTL} s (in {add_s:.2f} s); the kernel sweeper (a BPF timer, "
                 f"1 s tick) made {walks - walks0} walk(s) and removed {removed - removed0:,} elements; the last was "
                 f"gone {t_done:.2f} s after the expiry. Elements left: "
                 f"{', '.join(f'{s.name} {s.n4}' for s in left) or 'none'}.\n")
    lines.append("| /proc/stat, all CPUs | idle reference | sweeping interval | difference |")
    lines.append("|---|---:|---:|---:|")
    for k in ("softirq", "system", "irq"):
        a = (ci[k] - c0[k]) / idle_s
        b = (c2[k] - cb[k]) / busy_s
        lines.append(f"| {k} ms per s | {a * 1e3:.0f} | {b * 1e3:.0f} | {(b - a) * 1e3:+.0f} |")
    tot = sum((c2[k] - cb[k]) - (ci[k] - c0[k]) * busy_s / idle_s for k in ("softirq", "system", "irq"))
    lines.append(f"\nsoftirq + system + irq over the sweeping interval beyond the idle rate: {tot * 1e3:.0f} ms "
                 "of CPU.")
    lines.append(f"\n(interval lengths: idle {idle_s:.1f} s, sweeping {busy_s:.2f} s; /proc/stat counts in ticks of "
                 f"{1000 // TICK} ms.)")
    diffs = {k: (s1[k][0] - s0.get(k, (0, 0))[0], s1[k][1] - s0.get(k, (0, 0))[1]) for k in s1}
    lines.append(f"\nbpf_stats over the interval (run_time_ns, run_cnt) of programs named sweep_start/xdp_filter: "
                 f"{diffs or 'none'}.")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print("## Load time\n")
    print("\n".join(load_times(args.runs)))
    with tempfile.TemporaryDirectory() as tmp:
        print("\n## One sweep walk (exact)\n")
        print("\n".join(walk_cost(tmp, args.runs)))
    print("\n## The sweeper at work\n")
    print("\n".join(real_sweeper()))


if __name__ == "__main__":
    main()
