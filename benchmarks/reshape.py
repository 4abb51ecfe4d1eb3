"""What the loader's shapes cost the control plane (issue 18, item 1):

1. load (verification) time of the filter program per shape: the general
   program against the shapes configurations need (ms, median);
2. config changes on a state attached to a veth (native XDP), each against
   the same change under a baseline tree (the commit before the shapes,
   767ecaa unless told): ones that keep the shape (a port rule added and
   deleted, a set element added) and ones that change it (connection state
   off/on, the set rule deleted/inserted: here a program is loaded and
   replaced), in the same run, processes interleaved;
3. `pyxdp-load attach` (fresh state, native) against `xdp-filter load`,
   this tree and the baseline, interleaved, and where attach's time goes
   (each stage timed in one process: imports, state with its maps and
   programs, the netlink attach; each program's verification alone).

A veth pair pxshape0/pxshape1 in the host's namespace (made and removed
here). Run as root from a git checkout (the baseline is extracted with git
archive), or give a baseline tree:

    sudo .venv/bin/python benchmarks/reshape.py [--runs 7] [--baseline DIR | --baseline-commit REV]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
DEV, PEER = "pxshape0", "pxshape1"
CLI = "from pyxdp.cli import entry_point; import sys; sys.argv[0] = 'pyxdp-load'; entry_point()"

# Runs in a child with PYTHONPATH at a tree: one state attached to DEV, each edit timed (ms) in process.
EDITS = r"""
import json, sys, time
from pyxdp import Filter
from pyxdp.model.prefix import parse_prefix
pin, dev, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {}
def timed(name, fn):
    t = time.perf_counter()
    fn()
    out.setdefault(name, []).append((time.perf_counter() - t) * 1e3)
with Filter.open(pin, create=True, with_program=True) as flt:
    flt.attach(dev, mode=None)
    flt.allow("22/tcp")
    flt.ban(["192.0.2.1"])
    for i in range(runs):
        timed("keep: allow 80/tcp", lambda: flt.allow("80/tcp"))
        timed("keep: delete it", lambda: flt.delete_rules([flt.rules()[-1].rule]))
        timed("keep: set add one element", lambda: flt.set_add("banned", [parse_prefix(f"198.51.100.{i}")]))
        timed("shape: state off", lambda: flt.set_established(False))
        timed("shape: state on", lambda: flt.set_established(True))
        rule = [r.rule for r in flt.rules() if "@" in str(r.rule)][0]
        timed("shape: delete the set rule", lambda: flt.delete_rules([rule]))
        timed("shape: insert it again", lambda: flt.add_rule(rule, 1))
    flt.detach(dev)
print(json.dumps(out))
"""

# One process: attach's stages (ms) and each program's verification alone.
STAGES = r"""
import json, sys, time
t0 = time.perf_counter()
import pyxdp.cli.attach, pyxdp.filter
from pyxdp import Filter
t1 = time.perf_counter()
pin, dev = sys.argv[1], sys.argv[2]
flt = Filter.open(pin, create=True, with_program=True)
t2 = time.perf_counter()
flt.attach(dev)
t3 = time.perf_counter()
from pyxdp.store.objects import open_object
from pyxdp.store.shapes import needed
need = needed(flt.state, flt.config())
verify = {}
for prog, shape in (("xdp_filter", need), ("xdp_filter", 0), ("egress", need), ("sweep_start", need)):
    obj = open_object(pin, shape=shape)
    t = time.perf_counter()
    obj.only_program(prog)
    obj.load()
    verify[f"{prog} (shape {int(shape)})"] = (time.perf_counter() - t) * 1e3
    obj.close()
flt.detach(dev)
flt.close()
print(json.dumps({"imports": (t1 - t0) * 1e3, "state: maps, programs verified, pinned": (t2 - t1) * 1e3,
                  "attach: netlink, egress (tc) + XDP": (t3 - t2) * 1e3,
                  "verify": verify}))
"""

LOADS = r"""
import json, sys, time
from pyxdp import Filter
from pyxdp.layout import Shape
from pyxdp.model.shapes import shape_for
from pyxdp.store.shapes import load
pin, runs = sys.argv[1], int(sys.argv[2])
cases = {
    "general (shape 0)": 0,
    "no rules, state on": shape_for(True, 0, 0, 0),
    "no rules, state off": shape_for(False, 0, 0, 0),
    "deny from @set + 4 port rules, state on": shape_for(True, 0, 5, 4 | 64 | 1),
    "the same, state off": shape_for(False, 0, 5, 4 | 64 | 1),
    "1,024 rules (/24 source + port), state on": shape_for(True, 0, 1024, 2 | 256 | 64 | 1),
}
out = {}
with Filter.open(pin, create=True) as flt:
    for _ in range(runs):
        for name, shape in cases.items():
            t = time.perf_counter()
            load(flt.state, shape).close()
            out.setdefault(name, []).append((time.perf_counter() - t) * 1e3)
print(json.dumps(out))
"""


def child(tree: str, code: str, *args: str) -> dict:  # type: ignore[type-arg]
    env = dict(os.environ, PYTHONPATH=tree)
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{tree}: {r.stderr.strip()[-600:]}")
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def wall(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    return (time.perf_counter() - t) * 1e3


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", help="a tree of the commit before the shapes (default: --baseline-commit of "
                    "this repository, extracted to a temporary directory)")
    ap.add_argument("--baseline-commit", default="767ecaa")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    made = None
    if args.baseline:
        base = os.path.abspath(args.baseline)
    else:
        import tempfile

        base = made = tempfile.mkdtemp(prefix="pyxdp-base-")
        arc = subprocess.run(["git", "-C", TOP, "archive", args.baseline_commit], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", base], input=arc.stdout, check=True)
    if os.path.exists("/sys/fs/bpf/xdp-filter"):
        sys.exit("/sys/fs/bpf/xdp-filter exists: xdp-filter is in use on this host; not benchmarking against it")
    pin = f"/sys/fs/bpf/pyxdp-bench-{os.getpid()}-reshape"
    libxdp_existed = os.path.exists("/sys/fs/bpf/xdp")
    try:
        subprocess.run(["ip", "link", "del", DEV], capture_output=True)
        subprocess.run(["ip", "link", "add", DEV, "type", "veth", "peer", "name", PEER], check=True)
        for d in (DEV, PEER):
            subprocess.run(["ip", "link", "set", d, "up"], check=True)

        loads = child(TOP, LOADS, pin, str(args.runs))
        shutil.rmtree(pin, ignore_errors=True)

        edits: dict[str, dict[str, list[float]]] = {"this tree": {}, "baseline": {}}
        for _ in range(3):  # interleaved: a process per tree each round
            for label, tree in (("this tree", TOP), ("baseline", base)):
                got = child(tree, EDITS, pin, DEV, str(args.runs))
                shutil.rmtree(pin, ignore_errors=True)
                for k, v in got.items():
                    edits[label].setdefault(k, []).extend(v)

        att: dict[str, list[float]] = {"xdp-filter load": [], "pyxdp-load attach (this tree)": [],
                                        "pyxdp-load attach (baseline)": []}
        for _ in range(args.runs):
            att["xdp-filter load"].append(wall(["xdp-filter", "load", DEV, "--mode", "native"]))
            subprocess.run(["xdp-filter", "unload", DEV], check=True, capture_output=True)
            for label, tree in (("this tree", TOP), ("baseline", base)):
                env = dict(os.environ, PYTHONPATH=tree)
                cmd = [sys.executable, "-c", CLI, "--pin-dir", pin]
                att[f"pyxdp-load attach ({label})"].append(wall(cmd + ["attach", DEV, "--mode", "native"], env))
                subprocess.run(cmd + ["detach", DEV], check=True, capture_output=True, env=env)
        py = [wall([sys.executable, "-c", "pass"]) for _ in range(args.runs)]
        stages = [child(TOP, STAGES, pin, DEV) for _ in range(3)]
    finally:
        subprocess.run(["xdp-filter", "unload", DEV], capture_output=True)
        subprocess.run(["ip", "link", "del", DEV], capture_output=True)
        shutil.rmtree(pin, ignore_errors=True)
        if not libxdp_existed:
            shutil.rmtree("/sys/fs/bpf/xdp", ignore_errors=True)
        if made:
            shutil.rmtree(made, ignore_errors=True)

    print(f"Filter program load (open on the pinned maps + verification), ms, median of {args.runs}:\n")
    print("| shape | ms |")
    print("|---|---:|")
    for k, v in loads.items():
        print(f"| {k} | {med(v):.1f} |")
    print(f"\nConfig changes on a state attached to a veth (native), ms in process, median of {3 * args.runs} "
          "(3 interleaved processes per tree):\n")
    print("| change | this tree | baseline (no shapes) |")
    print("|---|---:|---:|")
    for k, v in edits["this tree"].items():
        b = edits["baseline"].get(k)
        print(f"| {k} | {med(v):.1f} | {f'{med(b):.1f}' if b else '-'} |")
    ref = med(att["xdp-filter load"])
    print(f"\nProcess start to attached (veth, native, fresh state), ms, median of {args.runs} interleaved runs:\n")
    print("| command | ms | vs xdp-filter |")
    print("|---|---:|---:|")
    for k, v in att.items():
        print(f"| {k} | {med(v):.0f} | {med(v) / ref:.2f} |")
    print(f"| `python -c pass` | {med(py):.0f} | {med(py) / ref:.2f} |")
    print("\nWhere `attach` spends its time (this tree, one process, median of 3; Python's own start is the "
          "`python -c pass` row above):\n")
    print("| stage | ms |")
    print("|---|---:|")
    for k in ("imports", "state: maps, programs verified, pinned",
              "attach: netlink, egress (tc) + XDP"):
        print(f"| {k} | {med([s[k] for s in stages]):.0f} |")
    for k in stages[0]["verify"]:
        print(f"| verification alone: {k} | {med([s['verify'][k] for s in stages]):.0f} |")


if __name__ == "__main__":
    main()
