"""Bulk loads (issue 8: 1,000,000 prefixes through `ban --file` in <= 4 s and
<= 150 MiB peak RSS of the CLI). 1,000,000 IPv4 /24s and 100,000 IPv6 /48s:

- `pyxdp-load --create ban -q --file F` into a fresh pin directory, then the
  same file again (every element refreshed), and `pyxdp-load --create set add
  NAME --file F` into another fresh one: process start to exit, peak RSS of
  the process from wait4() (ru_maxrss);
- the API (`Filter.set_add`, prefixes already parsed);
- `nft -f` loading the same prefixes into an interval set of a netdev table
  in a network namespace this script makes (the host's ruleset untouched);
- the memory the set maps take (fdinfo memlock).

CLI runs: --rounds interleaved rounds (default 3), medians. Python bytecode is
cached in a temp dir (PYTHONPYCACHEPREFIX), as after `pip install`. Run as
root after scripts/setup.sh --bench:

    sudo .venv/bin/python benchmarks/bulk.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from core import BIN, pin_path, scratch_pin  # noqa: E402

from pyxdp import Filter  # noqa: E402
from pyxdp.model.prefix import read_prefix_lines  # noqa: E402

N4, N6 = 1_000_000, 100_000
NETNS = f"pxbench-nft-{os.getpid()}"


def v4_lines() -> list[str]:
    return [f"{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24" for i in range(N4)]


def v6_lines() -> list[str]:
    return [f"2001:{0xdb8 + (i >> 16):x}:{i & 0xFFFF:x}::/48" for i in range(N6)]


def memlock(flt: Filter, name: str) -> int:
    """The kernel's own account of a map's memory (fdinfo 'memlock')."""
    with open(f"/proc/self/fdinfo/{flt.state.map(name).fd}") as fh:
        for line in fh:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    return 0


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, peak RSS MiB) of one process."""
    with tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed: {err.read().decode(errors='replace').strip()[-300:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    pycache = tempfile.mkdtemp(prefix="pyxdp-bench-pyc-")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = pycache
    cli: dict[str, list[tuple[float, float]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            f4, f6 = os.path.join(tmp, "v4.txt"), os.path.join(tmp, "v6.txt")
            l4, l6 = v4_lines(), v6_lines()
            for path, lines in ((f4, l4), (f6, l6)):
                with open(path, "w") as fh:
                    fh.write("\n".join(lines) + "\n")
            subprocess.run([sys.executable, "-c", "import pyxdp.cli, pyxdp.filter, pyxdp.store.sets"],
                           env=env, check=True)

            # the CLI, interleaved rounds, a fresh pin directory per loader
            for r in range(args.rounds):
                for label, fam_file, first in (("4", f4, ["ban", "-q", "--file"]), ("6", f6, ["ban", "-q", "--file"]),
                                               ("4s", f4, ["set", "add", "big", "--file"])):
                    pin = pin_path(f"bulk-cli{r}-{label}")
                    try:
                        cli.setdefault(f"new{label}", []).append(
                            run([BIN, "--pin-dir", pin, "--create", *first, fam_file], env))
                        if label != "4s":  # the same file again: every element there already, refreshed
                            cli.setdefault(f"again{label}", []).append(
                                run([BIN, "--pin-dir", pin, *first, fam_file], env))
                    finally:
                        shutil.rmtree(pin, ignore_errors=True)

            with scratch_pin("bulk-api", make=False) as pin, Filter.open(pin, create=True) as flt:
                p4 = list(read_prefix_lines(l4))
                p6 = list(read_prefix_lines(l6))
                t = time.perf_counter()
                flt.set_add("big", p4)
                api4 = time.perf_counter() - t
                t = time.perf_counter()
                flt.set_add("big", p6)
                api6 = time.perf_counter() - t
                n = {s.name: (s.n4, s.n6) for s in flt.sets()}["big"]
                mem = {m: memlock(flt, m) for m in ("elem4", "trie4", "elem6", "trie6", "rvec", "rports", "events")}

            nft4, nft6 = os.path.join(tmp, "v4.nft"), os.path.join(tmp, "v6.nft")
            for path, fam, typ, lines in ((nft4, "4", "ipv4_addr", l4), (nft6, "6", "ipv6_addr", l6)):
                with open(path, "w") as fh:
                    fh.write(f"table netdev pxbench{fam} {{\n  set deny{fam} {{\n    type {typ}; flags interval;\n"
                             "    elements = {\n")
                    fh.write(",\n".join(lines))
                    fh.write("\n    }\n  }\n}\n")
            subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
            subprocess.run(["ip", "netns", "add", NETNS], check=True)
            try:
                nftv4 = run(["ip", "netns", "exec", NETNS, "nft", "-f", nft4], env)
                nftv6 = run(["ip", "netns", "exec", NETNS, "nft", "-f", nft6], env)
            finally:
                subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    finally:
        shutil.rmtree(pycache, ignore_errors=True)

    def med(key: str) -> tuple[float, float]:
        return (statistics.median(w for w, _ in cli[key]), statistics.median(m for _, m in cli[key]))

    print(f"Process start to exit (wall s) and peak RSS (MiB, ru_maxrss from wait4) of each command; CLI rows: "
          f"median of {args.rounds} interleaved rounds, a fresh pin directory each; API and nft: one run. "
          "Ratio to `nft -f` in brackets.\n")
    print(f"| loader | {N4:,} IPv4 /24: s | peak RSS MiB | {N6:,} IPv6 /48: s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    rows = [("`pyxdp-load --create ban -q --file F` (fresh state)", med("new4"), med("new6")),
            ("the same file again (every element refreshed)", med("again4"), med("again6")),
            ("`pyxdp-load --create set add big --file F` (fresh state)", med("new4s"), None)]
    for label, a, b in rows:
        bcells = f"{b[0]:.2f} ({b[0] / nftv6[0]:.2f}) | {b[1]:.0f}" if b else " | "
        print(f"| {label} | {a[0]:.2f} ({a[0] / nftv4[0]:.2f}) | {a[1]:.0f} | {bcells} |")
    print(f"| pyxdp API `Filter.set_add`, prefixes already parsed | {api4:.2f} ({api4 / nftv4[0]:.2f}) |  | "
          f"{api6:.2f} ({api6 / nftv6[0]:.2f}) |  |")
    print(f"| `nft -f` into an interval set (netdev table) | {nftv4[0]:.2f} (1.00) | {nftv4[1]:.0f} | "
          f"{nftv6[0]:.2f} (1.00) | {nftv6[1]:.0f} |")
    print("\nEvery CLI run, wall s / peak MiB: " + "; ".join(
        f"{k}: " + ", ".join(f"{w:.2f}/{m:.0f}" for w, m in v) for k, v in cli.items()))
    print(f"\nThe API's set afterwards: {n[0]:,} IPv4 and {n[1]:,} IPv6 elements. Memory of the maps (fdinfo "
          "`memlock`, the kernel's own count):\n")
    print("| map | MiB |")
    print("|---|---:|")
    for name, b in mem.items():
        print(f"| {name} | {b / 2**20:.1f} |")


if __name__ == "__main__":
    main()
