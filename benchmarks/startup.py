"""``pyxdp-load ban X``'s start-up, this tree against another commit, same run
(issue 23: the progress bar must not make a plain ban start slower).

Each tree is a ``git archive`` copy in a temp dir run as ``python -c 'from
pyxdp.cli import entry_point; entry_point()' --pin-dir P ban -q ADDR`` with
PYTHONPATH on the copy (the same interpreter and dependencies: this venv's),
bytecode cached in a temp dir (PYTHONPYCACHEPREFIX) as after ``pip install``;
``python -c pass`` beside them. One process per ban, interleaved, medians of
--runs runs (default 31). Run as root:

    sudo .venv/bin/python benchmarks/startup.py [--before REF] [--after REF] [--runs 31]

REF defaults: --before the merge base with main, --after HEAD ("WORKTREE": the files as they are).
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
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from core import scratch_pin  # noqa: E402

from pyxdp import Filter  # noqa: E402

RUN = "import sys; sys.argv[0] = 'pyxdp-load'; from pyxdp.cli import entry_point; entry_point()"


def tree(ref: str, into: str) -> str:
    """A copy of the package at ``ref`` (WORKTREE: the files as they are) under ``into``."""
    os.makedirs(into)
    if ref == "WORKTREE":
        shutil.copytree(os.path.join(ROOT, "pyxdp"), os.path.join(into, "pyxdp"))
    else:
        archive = subprocess.run(["git", "-C", ROOT, "archive", ref, "pyxdp"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before")
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--runs", type=int, default=31)
    a = ap.parse_args()
    before = a.before or subprocess.run(["git", "-C", ROOT, "merge-base", "HEAD", "main"], check=True,
                                        capture_output=True, text=True).stdout.strip()
    tmp = tempfile.mkdtemp(prefix="pxbench-startup-")
    try:
        trees = {k: tree(ref, os.path.join(tmp, k)) for k, ref in (("before", before), ("after", a.after))}
        base = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
        base["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pyc")
        envs = {k: dict(base, PYTHONPATH=d) for k, d in trees.items()}
        times: dict[str, list[float]] = {"python -c pass": [], "before": [], "after": []}
        with scratch_pin("startup", make=False) as pin:
            Filter.open(pin, create=True).close()
            for env in envs.values():  # fill the bytecode cache
                subprocess.run([sys.executable, "-c", RUN, "--pin-dir", pin, "ban", "-q", "198.18.0.1"], env=env,
                               check=True, stdout=subprocess.DEVNULL)
            for i in range(a.runs):
                addr = f"198.51.{i % 256}.{i // 256 + 1}"
                times["python -c pass"].append(timed([sys.executable, "-c", "pass"], base))
                for k in ("before", "after") if i % 2 else ("after", "before"):
                    times[k].append(timed([sys.executable, "-c", RUN, "--pin-dir", pin, "ban", "-q", addr],
                                          envs[k]))
            with Filter.open(pin) as flt:
                flt.remove_state()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    py = statistics.median(times["python -c pass"])
    print(f"`pyxdp-load ban -q X`, one process per ban, median of {a.runs} interleaved runs "
          f"(before: {before[:10]}, after: {a.after})\n")
    print("| command | median ms | vs `python -c pass` |")
    print("|---|---:|---:|")
    for k, xs in times.items():
        med = statistics.median(xs)
        print(f"| {k} | {med * 1e3:.1f} | {med / py:.2f} |")


if __name__ == "__main__":
    main()
