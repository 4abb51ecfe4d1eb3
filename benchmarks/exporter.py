"""How long a Prometheus scrape of ``pyxdp-load exporter`` takes (issue 11: under
50 ms with a 1,000,000-element set, no series per element).

One state, attached (native) to a veth inside a network namespace this script
makes (the slowest case for the interface check: netlink enters the
namespace), and one exporter process on a free loopback port. It is scraped
over HTTP (urllib, a fresh connection each time, the whole body read) ten
times after one warm-up scrape, first with the state empty, then after
``pyxdp-load set add big --file F`` of 1,000,000 IPv4 /24s, in the same run.
It prints the medians of the round trip and of the exporter's own
``pyxdp_scrape_duration_seconds`` (the reading of the state alone), and the
size of the answer. Then it scrapes back to back while the same file is added
again (every element refreshed: a change working on the set for seconds) and
prints the median and the slowest of those scrapes. Run as root from the top of the tree:

    sudo .venv/bin/python benchmarks/exporter.py [--scrapes 10]

Everything it makes (the pin dir /sys/fs/bpf/pyxdp-bench-<pid>-exporter, the
namespace pxbench-exp-<pid>, temp files) is removed at the end, also on
failure.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from core import BIN, scratch_pin  # noqa: E402

N4 = 1_000_000
NETNS = f"pxbench-exp-{os.getpid()}"


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def scrapes(url: str, n: int) -> tuple[float, float, int, int]:
    """(median round trip ms, median collector ms, body bytes, pyxdp_ series) over ``n`` scrapes after one."""
    rtt, own = [], []
    body = b""
    for i in range(n + 1):
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = resp.read()
        took = time.perf_counter() - t
        m = re.search(rb"^pyxdp_scrape_duration_seconds (\S+)$", body, re.M)
        assert m and re.search(rb"^pyxdp_up 1", body, re.M), body[:500]
        if i:  # the first is the warm-up
            rtt.append(took * 1e3)
            own.append(float(m.group(1)) * 1e3)
    series = sum(1 for ln in body.splitlines() if ln.startswith(b"pyxdp_"))
    return statistics.median(rtt), statistics.median(own), len(body), series


def scrapes_during(url: str, cmd: list[str]) -> tuple[int, float, float]:
    """(scrapes, median ms, slowest ms) of scrapes back to back while ``cmd`` runs."""
    took = []
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as resp:
            resp.read()
        took.append((time.perf_counter() - t) * 1e3)
    assert proc.returncode == 0
    return len(took), statistics.median(took), max(took)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scrapes", type=int, default=10)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="pyxdp-bench-exp-")
    exporter = None
    try:
        sh("ip", "netns", "add", NETNS)
        sh("ip", "-n", NETNS, "link", "add", "pxe0", "type", "veth", "peer", "name", "pxe1")
        sh("ip", "-n", NETNS, "link", "set", "pxe0", "up")
        sh("ip", "-n", NETNS, "link", "set", "pxe1", "up")
        with scratch_pin("exporter", make=False) as pin:
            sh(BIN, "--pin-dir", pin, "attach", "pxe1", "--netns", NETNS, "--mode", "native")
            err = open(os.path.join(tmp, "stderr"), "w+")  # noqa: SIM115
            exporter = subprocess.Popen([BIN, "--pin-dir", pin, "exporter", "--listen", "127.0.0.1:0"],
                                        stdout=subprocess.DEVNULL, stderr=err)
            url = None
            for _ in range(300):
                err.seek(0)
                m = re.search(r"on (http://\S+/metrics)", err.read())
                if m:
                    url = m.group(1)
                    break
                time.sleep(0.1)
            assert url, "the exporter did not start"
            rows = [("empty state (no rules, no sets), one interface", *scrapes(url, args.scrapes))]
            big = os.path.join(tmp, "big.txt")
            with open(big, "w") as fh:
                fh.writelines(f"{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24\n" for i in range(N4))
            t = time.perf_counter()
            sh(BIN, "--pin-dir", pin, "set", "add", "big", "--file", big)
            loaded = time.perf_counter() - t
            sh(BIN, "--pin-dir", pin, "deny", "from", "@big")
            rows.append((f"set 'big' with {N4:,} /24s and 'deny from @big'", *scrapes(url, args.scrapes)))
            t = time.perf_counter()
            during = scrapes_during(url, [BIN, "--pin-dir", pin, "set", "add", "big", "--file", big])
            refresh = time.perf_counter() - t
            exporter.terminate()
            assert exporter.wait(timeout=15) == 0
            exporter = None
            sh(BIN, "--pin-dir", pin, "detach", "pxe1", "--netns", NETNS)
    finally:
        if exporter is not None:
            exporter.kill()
            exporter.wait()
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"`pyxdp-load exporter` scrapes ({time.strftime('%Y-%m-%d')}, {platform.node() or 'this machine'}, "
          f"Linux {platform.release()}, {os.cpu_count()} CPUs): medians of {args.scrapes} scrapes after a warm-up; "
          "round trip = urllib request to the last byte of the answer, collector = the exporter's own "
          "pyxdp_scrape_duration_seconds (reading the state).\n")
    print("| state | round trip | collector | answer | pyxdp_ samples |")
    print("|---|---:|---:|---:|---:|")
    for what, rtt, own, size, series in rows:
        print(f"| {what} | {rtt:.1f} ms | {own:.1f} ms | {size:,} B | {series} |")
    print(f"\n(`set add big --file` of the {N4:,} prefixes took {loaded:.1f} s.) While the same file was added "
          f"again ({refresh:.1f} s, every element refreshed), {during[0]} scrapes back to back: median "
          f"{during[1]:.1f} ms, slowest {during[2]:.1f} ms.")


if __name__ == "__main__":
    main()
