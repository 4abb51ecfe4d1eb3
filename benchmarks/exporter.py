"""How long a Prometheus scrape of ``pyxdp-load exporter`` takes: with an empty
state, with a 1,000,000-element set (issue 11: no series per element), and
with 8,192 rules (issue 21: counters keyed by the rule's id, capped by
``--rule-metrics``, formatted without prometheus_client's samples), against
the exporter of another revision in the same run.

One state, attached (native) to a veth inside a network namespace this script
makes (the slowest case for the interface check: netlink enters the
namespace), and three exporter processes on free loopback ports: this tree's
with its default ``--rule-metrics``, this tree's with ``--rule-metrics all``,
and the one of ``--baseline REV`` (default ``main``: ``git archive REV
pyxdp`` into a temp directory, run by this venv's Python with that directory
first on sys.path and ``-P``, so not this tree; it reads the same state). They are scraped over HTTP
(urllib, a fresh connection each time, the whole body read) in turns, ten
rounds after one warm-up round, once plain and once asking for gzip as
Prometheus does. States, in this order: empty; after ``set add big --file F``
of 1,000,000 IPv4 /24s and ``deny from @big``; then the state removed and made
again with ``--rules 8192`` and a file of 8,192 rules applied. It prints the
medians of the round trip and of each exporter's own
``pyxdp_scrape_duration_seconds`` (the reading of the state alone), and the
size of the answer. While the 1,000,000 elements are added again (every
element refreshed: a change working on the set for seconds) it scrapes this
tree's exporter back to back and prints the median and the slowest of those
scrapes. Run as root from the top of the tree:

    sudo .venv/bin/python benchmarks/exporter.py [--scrapes 10] [--baseline main]

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
from typing import IO

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from core import BIN, scratch_pin  # noqa: E402

N4 = 1_000_000
N_RULES = 8192
NETNS = f"pxbench-exp-{os.getpid()}"


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


class Exporter:
    """One exporter process on a free loopback port, and its scrapes."""

    def __init__(self, name: str, cmd: list[str], tmp: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.err: IO[str] = open(os.path.join(tmp, f"stderr-{len(os.listdir(tmp))}"), "w+")  # noqa: SIM115
        self.proc = subprocess.Popen([*cmd, "exporter", "--listen", "127.0.0.1:0"] + self.extra(name),
                                     stdout=subprocess.DEVNULL, stderr=self.err, env=env)
        self.url = ""
        for _ in range(300):
            self.err.seek(0)
            m = re.search(r"on (http://\S+/metrics)", self.err.read())
            if m:
                self.url = m.group(1)
                break
            time.sleep(0.1)
        assert self.url, f"the exporter {name} did not start"

    @staticmethod
    def extra(name: str) -> list[str]:
        return ["--rule-metrics", "all"] if "--rule-metrics all" in name else []

    def scrape(self, gzip: bool = False) -> tuple[float, float, int, int]:
        """(round trip ms, collector ms, answer bytes as sent, pyxdp_ samples)."""
        import zlib

        req = urllib.request.Request(self.url, headers={"Accept-Encoding": "gzip"} if gzip else {})
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as resp:
            body = resp.read()
            zipped = resp.headers.get("Content-Encoding") == "gzip"
        took = time.perf_counter() - t
        sent = len(body)
        if zipped:
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
        assert zipped == gzip, self.name
        m = re.search(rb"^pyxdp_scrape_duration_seconds (\S+)$", body, re.M)
        assert m and re.search(rb"^pyxdp_up 1", body, re.M), body[:500]
        series = sum(1 for ln in body.splitlines() if ln.startswith(b"pyxdp_"))
        return took * 1e3, float(m.group(1)) * 1e3, sent, series

    def stop(self) -> None:
        self.proc.terminate()
        assert self.proc.wait(timeout=15) == 0, self.name
        self.err.close()


Row = tuple[str, str, float, float, float, int, int, int]


def measure(what: str, exporters: list[Exporter], n: int) -> list[Row]:
    """Each exporter scraped in turns: one warm-up round, then ``n``; plain and gzipped."""
    got: dict[tuple[str, bool], list[tuple[float, float, int, int]]] = {}
    for i in range(n + 1):
        for gz in (False, True):
            for e in exporters:
                r = e.scrape(gz)
                if i:
                    got.setdefault((e.name, gz), []).append(r)
    rows = []
    for e in exporters:
        plain, zipped = got[(e.name, False)], got[(e.name, True)]
        rows.append((what, e.name, statistics.median(r[0] for r in plain), statistics.median(r[0] for r in zipped),
                     statistics.median(r[1] for r in plain), plain[-1][2], zipped[-1][2], plain[-1][3]))
    return rows


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
    ap.add_argument("--baseline", default="main", help="the revision whose exporter is measured beside this tree's")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="pyxdp-bench-exp-")
    exporters: list[Exporter] = []
    base_src = os.path.join(tmp, "baseline")
    os.mkdir(base_src)
    tree = os.path.dirname(HERE)
    rev = subprocess.run(["git", "-C", tree, "rev-parse", "--short", args.baseline], check=True,
                         capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "-C", tree, "archive", args.baseline, "pyxdp"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", base_src], input=archive, check=True)
    head = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    rows: list[Row] = []
    load = [os.getloadavg()[0]]
    try:
        sh("ip", "netns", "add", NETNS)
        sh("ip", "-n", NETNS, "link", "add", "pxe0", "type", "veth", "peer", "name", "pxe1")
        sh("ip", "-n", NETNS, "link", "set", "pxe0", "up")
        sh("ip", "-n", NETNS, "link", "set", "pxe1", "up")
        with scratch_pin("exporter", make=False) as pin:
            sh(BIN, "--pin-dir", pin, "attach", "pxe1", "--netns", NETNS, "--mode", "native")
            base_env = {**os.environ, "PYTHONPATH": base_src}
            exporters = [
                Exporter(f"before ({args.baseline}, {rev})",
                         [sys.executable, "-P", "-m", "pyxdp.cli", "--pin-dir", pin], tmp, base_env),
                Exporter(f"after ({head}), default", [BIN, "--pin-dir", pin], tmp),
                Exporter(f"after ({head}), --rule-metrics all", [BIN, "--pin-dir", pin], tmp),
            ]
            rows += measure("empty state (no rules, no sets), one interface", exporters, args.scrapes)
            big = os.path.join(tmp, "big.txt")
            with open(big, "w") as fh:
                fh.writelines(f"{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24\n" for i in range(N4))
            t = time.perf_counter()
            sh(BIN, "--pin-dir", pin, "set", "add", "big", "--file", big)
            loaded = time.perf_counter() - t
            sh(BIN, "--pin-dir", pin, "deny", "from", "@big")
            rows += measure(f"set 'big' with {N4:,} /24s and 'deny from @big'", exporters, args.scrapes)
            t = time.perf_counter()
            during = scrapes_during(exporters[1].url, [BIN, "--pin-dir", pin, "set", "add", "big", "--file", big])
            refresh = time.perf_counter() - t
            sh(BIN, "--pin-dir", pin, "detach", "pxe1", "--netns", NETNS)  # the last interface: state removed
            sh(BIN, "--pin-dir", pin, "attach", "pxe1", "--netns", NETNS, "--mode", "native", "--rules",
               str(N_RULES))
            rules_file = os.path.join(tmp, "rules.toml")
            with open(rules_file, "w") as fh:
                fh.write("rules = [\n" + "".join(f'  "deny proto tcp from 10.{i >> 8}.{i & 255}.0/24 to any port '
                                                 f'{i + 1}",\n' for i in range(N_RULES)) + "]\n")
            sh(BIN, "--pin-dir", pin, "apply", rules_file)
            rows += measure(f"{N_RULES:,} rules (capacity {N_RULES:,}), no set", exporters, args.scrapes)
            load.append(os.getloadavg()[0])
            for e in exporters:
                e.stop()
            exporters = []
            sh(BIN, "--pin-dir", pin, "detach", "pxe1", "--netns", NETNS)
    finally:
        for e in exporters:
            e.proc.kill()
            e.proc.wait()
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"`pyxdp-load exporter` scrapes ({time.strftime('%Y-%m-%d')}, {platform.node() or 'this machine'}, "
          f"Linux {platform.release()}, {os.cpu_count()} CPUs): medians of {args.scrapes} rounds after a warm-up, "
          "the exporters scraped in turns against the same state; round trip = urllib request to the last byte "
          "of the answer (gzip: asking for it, as Prometheus does), collector = the exporter's own "
          "pyxdp_scrape_duration_seconds (reading the state); the default of this tree is --rule-metrics "
          f"top:1024. Load average (1 min) {load[0]:.1f} at the start, {load[-1]:.1f} at the end.\n")
    print("| state | exporter | round trip | gzip round trip | collector | answer | gzipped | pyxdp_ samples |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for what, name, rtt, gz, own, size, zsize, series in rows:
        print(f"| {what} | {name} | {rtt:.1f} ms | {gz:.1f} ms | {own:.1f} ms | {size:,} B | {zsize:,} B | "
              f"{series:,} |")
    print(f"\n(`set add big --file` of the {N4:,} prefixes took {loaded:.1f} s.) While the same file was added "
          f"again ({refresh:.1f} s, every element refreshed), {during[0]} scrapes of this tree's exporter back to "
          f"back: median {during[1]:.1f} ms, slowest {during[2]:.1f} ms.")


if __name__ == "__main__":
    main()
