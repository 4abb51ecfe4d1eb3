"""Control plane (the benchmarks issue, part 3): process start to attached,
and peak memory, for the seed's program and for the filter.

- bcc (Debian's python3-bpfcc): the seed article's way, compiling the "got a
  packet" C source at every start. bcc needs the running kernel's headers;
  this kernel ships none, so the script points bcc at Debian 12's
  linux-headers (6.1) by creating /lib/modules/$(uname -r)/{build,source}
  symlinks for the run, and removes them afterwards (only if it made them).
  The program is trivial enough to compile against other headers.
- `pyxdp-load load examples/packets.bpf.o`: the same program, precompiled.
- `pyxdp-load attach`: the whole filter, fresh state (maps made, program
  verified and pinned, attached).
- `xdp-filter load`: xdp-tools' filter.

Each on a veth pair the script makes (pxbcc0/pxbcc1), native mode where
there is a choice; detaching is done outside the timed run. Wall time with
perf_counter around the process, peak RSS from wait4(). Run as root after
scripts/setup.sh --bench:

    sudo .venv/bin/python benchmarks/attach.py [--runs 10] [--baseline OTHER/.venv/bin/pyxdp-load]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
BIN = os.path.join(os.path.dirname(sys.executable), "pyxdp-load")
DEV = "pxbcc0"
PIN = f"/sys/fs/bpf/pyxdp-bench-{os.getpid()}-attach"
HEADERS = "/usr/src"

BCC_PROG = r'''
import sys
from bcc import BPF
b = BPF(text="""
int packetfilter(struct xdp_md *ctx) {
    bpf_trace_printk("got a packet\\n");
    return XDP_PASS;
}
""")
b.attach_xdp(sys.argv[1], b.load_func("packetfilter", BPF.XDP), 0)
'''


def measure(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in KiB) of one process."""
    import tempfile

    with tempfile.TemporaryFile() as err:  # a pipe left unread could fill and block the child
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed: {err.read().decode(errors='replace').strip()[-300:]}")
    return wall, usage.ru_maxrss


def headers_for_bcc(made: list[str]) -> None:
    """Make /lib/modules/$(uname -r)/{build,source} point at Debian's 6.1
    headers when the kernel has none; records in ``made`` what it made, as it
    goes, so that a failure halfway is undone too."""
    mod = f"/lib/modules/{platform.release()}"
    builds = sorted(d for d in os.listdir(HEADERS) if d.startswith("linux-headers-") and d.endswith("-amd64"))
    commons = sorted(d for d in os.listdir(HEADERS) if d.startswith("linux-headers-") and d.endswith("-common"))
    if not builds or not commons:
        raise RuntimeError("no Debian linux-headers package (scripts/setup.sh --bench installs linux-headers-amd64)")
    if not os.path.isdir(mod):
        os.makedirs(mod)
        made.append(mod)
    for name, target in (("build", builds[-1]), ("source", commons[-1])):
        link = os.path.join(mod, name)
        if not os.path.lexists(link):
            os.symlink(os.path.join(HEADERS, target), link)
            made.append(link)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-bcc", action="store_true", help="leave bcc out (no kernel headers needed)")
    ap.add_argument("--baseline", metavar="PYXDP_LOAD", help="also time this pyxdp-load (another tree's), interleaved")
    args = ap.parse_args()
    if os.path.exists("/sys/fs/bpf/xdp-filter"):
        sys.exit("/sys/fs/bpf/xdp-filter exists: xdp-filter is in use on this host; not benchmarking against it")
    links: list[str] = []
    libxdp_existed = os.path.exists("/sys/fs/bpf/xdp")
    undo = {
        "bcc": ["ip", "link", "set", DEV, "xdp", "off"],
        "pyxdp-load load (precompiled seed program)": [BIN, "unload", DEV],
        "pyxdp-load attach (the filter, fresh state)": [BIN, "--pin-dir", PIN, "detach", DEV],
        "xdp-filter load": ["xdp-filter", "unload", DEV],
    }
    cmds = {
        "bcc": ["/usr/bin/python3", "-c", BCC_PROG, DEV],
        "pyxdp-load load (precompiled seed program)": [BIN, "load", os.path.join(TOP, "examples", "packets.bpf.o"),
                                                       DEV, "--mode", "native"],
        "pyxdp-load attach (the filter, fresh state)": [BIN, "--pin-dir", PIN, "attach", DEV, "--mode", "native"],
        "xdp-filter load": ["xdp-filter", "load", DEV, "--mode", "native"],
    }
    if args.no_bcc:
        del cmds["bcc"]
    if args.baseline:
        name = "pyxdp-load attach (baseline tree)"
        cmds[name] = [args.baseline, "--pin-dir", PIN + "-base", "attach", DEV, "--mode", "native"]
        undo[name] = [args.baseline, "--pin-dir", PIN + "-base", "detach", DEV]
    res: dict[str, list[tuple[float, int]]] = {k: [] for k in cmds}
    try:
        subprocess.run(["ip", "link", "del", DEV], capture_output=True)
        subprocess.run(["ip", "link", "add", DEV, "type", "veth", "peer", "name", "pxbcc1"], check=True)
        for d in (DEV, "pxbcc1"):
            subprocess.run(["ip", "link", "set", d, "up"], check=True)
        if not args.no_bcc:
            headers_for_bcc(links)
        for _ in range(args.runs):
            for name, cmd in cmds.items():
                res[name].append(measure(cmd))
                subprocess.run(undo[name], capture_output=True, check=True)
    finally:
        subprocess.run(["xdp-filter", "unload", DEV], capture_output=True)
        subprocess.run(["ip", "link", "del", DEV], capture_output=True)
        shutil.rmtree(PIN, ignore_errors=True)
        shutil.rmtree(PIN + "-base", ignore_errors=True)
        for link in reversed(links):  # the links, then the directory if it was made for them
            if os.path.islink(link):
                os.unlink(link)
            else:
                os.rmdir(link)
        if not libxdp_existed:
            shutil.rmtree("/sys/fs/bpf/xdp", ignore_errors=True)
    ref = statistics.median(w for w, _ in res["bcc" if "bcc" in res else "xdp-filter load"])
    ref_xf = statistics.median(w for w, _ in res["xdp-filter load"])
    print(f"Process start to attached (veth, native mode where asked), median of {args.runs} interleaved runs; "
          "peak RSS from wait4().\n")
    print("| command | wall ms | vs bcc | vs xdp-filter | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    for name in cmds:
        w = statistics.median(x for x, _ in res[name])
        rss = statistics.median(r for _, r in res[name]) / 1024
        print(f"| {name} | {w * 1e3:.0f} | {w / ref:.2f} | {w / ref_xf:.2f} | {rss:.0f} |")
    if links:
        made = ", ".join(x for x in links if os.path.basename(x) in ("build", "source"))
        print(f"\n(bcc compiled against Debian's 6.1 headers through {made}, made for the run and removed.)")


if __name__ == "__main__":
    main()
