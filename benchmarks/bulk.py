"""Bulk loads (the benchmarks issue, part 4): 1,000,000 IPv4 /24s and
100,000 IPv6 /48s into pyxdp through the API and through `pyxdp-load deny
--file`, against `nft -f` loading the same prefixes into interval sets (in a
network namespace this script makes, so the host's ruleset is untouched),
and the memory the maps take. Run as root after scripts/setup.sh --bench:

    sudo .venv/bin/python benchmarks/bulk.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from core import BIN, scratch_pin  # noqa: E402

from pyxdp import Filter  # noqa: E402
from pyxdp.entries import read_prefix_lines  # noqa: E402
from pyxdp.layout import Action  # noqa: E402

N4, N6 = 1_000_000, 100_000
NETNS = "pxbench-nft"


def v4_lines() -> list[str]:
    return [f"{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24" for i in range(N4)]


def v6_lines() -> list[str]:
    return [f"2001:{0xdb8 + (i >> 16):x}:{i & 0xFFFF:x}::/48" for i in range(N6)]


def memlock(flt: Filter, name: str) -> int:
    """The kernel's own account of a map's memory (fdinfo 'memlock')."""
    with open(f"/proc/self/fdinfo/{flt.map(name).fd}") as fh:
        for line in fh:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    return 0


def timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        f4, f6 = os.path.join(tmp, "v4.txt"), os.path.join(tmp, "v6.txt")
        l4, l6 = v4_lines(), v6_lines()
        for path, lines in ((f4, l4), (f6, l6)):
            with open(path, "w") as fh:
                fh.write("\n".join(lines) + "\n")

        with scratch_pin("bulk-api") as pin, Filter.open(pin, create=True) as flt:
            p4 = list(read_prefix_lines(l4))
            p6 = list(read_prefix_lines(l6))
            api4 = timed(lambda: flt.add_targets(p4, Action.DENY))
            api6 = timed(lambda: flt.add_targets(p6, Action.DENY))
            mem = {n: memlock(flt, n) for n in ("src4", "lpm4", "src6", "lpm6", "ports", "stats", "events")}
        rows.append(("pyxdp API `add_targets`, prefixes already parsed", api4, api6))

        with scratch_pin("bulk-cli") as pin:
            os.rmdir(pin)
            cli4 = timed(lambda: subprocess.run([BIN, "--pin-dir", pin, "deny", "-q", "--file", f4], check=True))
            cli6 = timed(lambda: subprocess.run([BIN, "--pin-dir", pin, "deny", "-q", "--file", f6], check=True))
        rows.append(("`pyxdp-load deny --file` (process start to exit)", cli4, cli6))

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
            nftv4 = timed(lambda: subprocess.run(["ip", "netns", "exec", NETNS, "nft", "-f", nft4], check=True))
            nftv6 = timed(lambda: subprocess.run(["ip", "netns", "exec", NETNS, "nft", "-f", nft6], check=True))
        finally:
            subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
        rows.append(("`nft -f` into an interval set (netdev table)", nftv4, nftv6))

    print("Wall seconds, one run each (a load of this size is not repeated in a loop); ratio to nft in brackets.\n")
    print(f"| loader | {N4:,} IPv4 /24 | {N6:,} IPv6 /48 |")
    print("|---|---:|---:|")
    for label, a, b in rows:
        print(f"| {label} | {a:.2f} ({a / nftv4:.2f}) | {b:.2f} ({b / nftv6:.2f}) |")
    print("\nMemory of pyxdp's maps after the API load (fdinfo `memlock`, the kernel's own count):\n")
    print("| map | MiB |")
    print("|---|---:|")
    for name, b in mem.items():
        print(f"| {name} | {b / 2**20:.1f} |")


if __name__ == "__main__":
    main()
