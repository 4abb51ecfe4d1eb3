"""Tracing throughput (the benchmarks issue, part 5): how many events per
second `pyxdp-load trace --json` delivers before it starts losing them.

A producer thread runs the pinned filter program through BPF_PROG_TEST_RUN
in paced bursts (each run of a traced packet writes one event to the shared
ring buffer, as a real packet would), at a series of offered rates; a
`pyxdp-load trace --json` process reads the ring and writes JSON lines into a
pipe this script counts. Lost events come from the filter's own counter.
Run as root after scripts/setup.sh --bench:

    sudo .venv/bin/python benchmarks/tracing.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from core import BIN, scratch_pin  # noqa: E402
from helpers import packets as P  # noqa: E402

from pyxdp import Filter  # noqa: E402

RATES = [10_000, 30_000, 60_000, 100_000, 150_000, 200_000]
SECONDS = 3.0
MAX_BURST = 4000  # events per test-run call: well inside the ring (about 14,500 events of 72 bytes)


def produce(prog: object, rate: int, seconds: float, done: list[int]) -> None:
    """Offer ``rate`` events/s on average. A test-run call costs ~17 ms of
    setup here whatever its repeat count, so events come in bursts of up to
    MAX_BURST, produced within microseconds, paced to the rate."""
    pkt = P.udp4("192.0.2.1", 53)
    burst = min(MAX_BURST, max(100, rate // 50))
    sent = 0
    start = time.perf_counter()
    while (now := time.perf_counter() - start) < seconds:
        if sent < int(now * rate) + burst:
            prog.test_run(pkt, repeat=burst)  # type: ignore[attr-defined]
            sent += burst
        else:
            time.sleep(0.002)
    done.append(sent)


def one_rate(pin: str, prog: object, flt: Filter, rate: int) -> tuple[int, int, int]:
    tracer = subprocess.Popen([BIN, "--pin-dir", pin, "trace", "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    got = [0]

    def count() -> None:
        assert tracer.stdout is not None
        for _line in tracer.stdout:
            got[0] += 1

    reader = threading.Thread(target=count, daemon=True)
    reader.start()
    try:
        deadline = time.time() + 10
        while flt.config().trace_every == 0 and time.time() < deadline:  # the tracer has switched tracing on
            time.sleep(0.01)
        lost0 = flt.stats().lost_events
        done: list[int] = []
        produce(prog, rate, SECONDS, done)
        time.sleep(0.5)  # let the reader drain
        tracer.terminate()
        tracer.wait(timeout=10)
        reader.join(timeout=10)
        return done[0], got[0], flt.stats().lost_events - lost0
    finally:
        tracer.kill()
        tracer.wait()


def main() -> None:
    rows = []
    with scratch_pin("trace", make=False) as pin:
        with Filter.open(pin, create=True) as flt:
            prog = flt.program()
        with Filter.open(pin, lock=False) as flt:
            for rate in RATES:
                rows.append((rate, *one_rate(pin, prog, flt, rate)))
        prog.close()
    print(f"`pyxdp-load trace --json` reading a 1 MiB ring (64-byte events), {SECONDS:.0f} s per offered rate, "
          f"events offered in bursts of up to {MAX_BURST:,}; stdout into a pipe that is only counted.\n")
    print("| offered events/s | produced | delivered | lost | delivered/s |")
    print("|---:|---:|---:|---:|---:|")
    for rate, sent, got, lost in rows:
        print(f"| {rate:,} | {sent:,} | {got:,} | {lost:,} | {got / SECONDS:,.0f} |")


if __name__ == "__main__":
    main()
