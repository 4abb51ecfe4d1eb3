"""The differential run against the real ufw at length (root; after
scripts/setup.sh --test): N random scenarios (default 200) of commands typed
to Debian's ufw and to pyxdp, probes, and what reaches each host compared,
by class (tests/helpers/ufwdiff.py says how). The suite runs a few
(tests/kernel/test_ufw.py).

    .venv/bin/python scripts/ufw_diff.py [--scenarios N] [--seed S] [--jobs J] [-v]

--jobs runs J processes side by side (each its own namespaces and pin dir),
scenario seeds S*100000 + i as with one. Exit 1 when a difference is outside
the documented classes or the host's firewall or ufw files changed."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: the finally clauses remove namespaces and pins


def main() -> int:
    from helpers import ufw as U
    from helpers.ufwdiff import Differ, Result

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)  # a job's share: scenario first,
    ap.add_argument("--stride", type=int, default=1, help=argparse.SUPPRESS)  # first + stride, ...
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # a job's result, for the parent
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    why = U.available()
    if why:
        print(f"ufw_diff: {why}", file=sys.stderr)
        return 1
    # names that no test run's sweep takes for a dead run's leftovers (those are pxt<pid>-, pyxdp-t<pid>-)
    from helpers import env

    env.RUN = f"ufw{os.getpid()}"
    before = U.host_fingerprint()
    start = time.monotonic()
    result = Result()
    if args.jobs > 1:
        share = [range(k, args.scenarios, args.jobs) for k in range(args.jobs)]
        verbose = ["-v"] if args.verbose else []
        procs = [subprocess.Popen([sys.executable, __file__, "--scenarios", str(len(r)), "--seed", str(args.seed),
                                   "--first", str(k), "--stride", str(args.jobs), "--json", *verbose],
                                  stdout=subprocess.PIPE, text=True) for k, r in enumerate(share)]
        try:
            outs = [p.communicate()[0] for p in procs]
        except SystemExit:  # stopped: each job ends with what it has done so far
            for p in procs:
                p.terminate()
            outs = [p.communicate()[0] for p in procs]
        for out in outs:
            lines = out.splitlines()
            if args.verbose:
                print("\n".join(lines[:-1]))
            if lines and lines[-1].startswith("{"):
                result.add(json.loads(lines[-1]))
            else:
                print("a job ended without its result")
                result.unexplained.append("a job ended without its result")
    else:
        d = Differ(log=print if args.verbose else lambda _: None)
        try:
            for i in range(args.scenarios):
                seed = args.seed * 100000 + args.first + i * args.stride
                d.scenario(seed)
                if args.verbose:
                    print(f"scenario seed {seed}: {d.result.probes} probes so far, "
                          f"{sum(d.result.diffs.values())} differences", flush=True)
        except SystemExit:
            if not args.json:
                raise
        finally:
            d.close()
            if args.json:
                print(json.dumps(d.result.to_json()), flush=True)
        if args.json:
            return 0
        result = d.result
    after = U.host_fingerprint()
    print(result.report())
    print(f"took {time.monotonic() - start:.0f} s")
    changed = [k for k in before if before[k] != after.get(k)]
    print(f"HOST CHANGED: {changed}" if changed else "host firewall and ufw files: unchanged")
    return 1 if result.outside() or changed else 0


if __name__ == "__main__":
    sys.exit(main())
