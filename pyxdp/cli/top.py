"""``pyxdp-load top``: a live view of one pyxdp state, refreshed every interval.

What it shows comes from the difference of two readings of the counters one
interval apart (packets and bits per second per interface, verdict and
reason; the busiest rules by hits) and from sampled trace events (the
sources with the most dropped packets since it started). Drawn with rich
(``Live`` on the alternate screen of a terminal; plain text with ``--once``
or when the output is not a terminal).

Tracing is turned on for the view only when it is off (a running ``trace``
has the ring buffer to itself) and turned off again on the way out, also on
Ctrl-C or SIGTERM: SIGINT and SIGTERM are held while tracing is switched,
and the view leaves at its next wait (within 0.2 s of the signal).

Needs ``rich`` (``pip install 'pyxdp[top]'``); nothing else in pyxdp imports
this module."""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, NamedTuple

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..layout import Verdict
from ..store.lock import signals_deferred

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import FrameType

    from rich.console import RenderableType

    from ..filter import Filter
    from ..observe import Event, Stats, Tracer
    from ..store.ruleset import RuleState

TOP_RULES = 10
TOP_SOURCES = 10
DEFAULT_SAMPLE = 100


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM: leave, restoring tracing and the terminal."""


class Reading(NamedTuple):
    at: float  # time.monotonic()
    stats: Stats
    rules: list[RuleState]


def read(flt: Filter) -> Reading:
    return Reading(time.monotonic(), flt.stats(), flt.rules())


class Sources:
    """Dropped packets per source address, from sampled trace events."""

    def __init__(self, every: int) -> None:
        self.every = every  # one event per this many packets; 0: not sampled
        self.note = ""  # why there are no samples, when there are none
        self.dropped: Counter[str] = Counter()
        self.last: Counter[str] = Counter()  # in the latest interval
        self.events = 0

    def start_interval(self) -> None:
        self.last = Counter()

    def add(self, events: Iterable[Event]) -> None:
        for ev in events:
            self.events += 1
            if ev.verdict == Verdict.DROP:
                src = ev.src or "(not IP)"
                self.dropped[src] += 1
                self.last[src] += 1


def si(value: float) -> str:
    """1234567 -> '1.2M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _iface(name: str) -> str:
    return name or "-"


def traffic_table(before: Reading, after: Reading) -> Table:
    dt = max(after.at - before.at, 1e-9)
    old = {(ln.interface, ln.verdict, ln.reason): ln for ln in before.stats.lines}
    t = Table(box=box.SIMPLE, pad_edge=False, show_edge=False)
    for name, right in (("interface", False), ("verdict", False), ("reason", False), ("pps", True),
                        ("bit/s", True), ("packets", True), ("bytes", True)):
        t.add_column(name, justify="right" if right else "left", no_wrap=True)
    lines = sorted(after.stats.lines, key=lambda ln: (ln.interface, ln.verdict, ln.reason))
    for ln in lines:
        prev = old.get((ln.interface, ln.verdict, ln.reason))
        dp = max(ln.packets - (prev.packets if prev else 0), 0)
        db = max(ln.bytes - (prev.bytes if prev else 0), 0)
        t.add_row(_iface(ln.interface), ln.verdict.label, ln.reason.label, si(dp / dt), si(db * 8 / dt),
                  str(ln.packets), str(ln.bytes), style="bold" if ln.verdict == Verdict.DROP and dp else None)
    if not lines:
        t.add_row("(no packets yet)", "", "", "", "", "", "")
    return t


def rules_table(before: Reading, after: Reading) -> Table:
    dt = max(after.at - before.at, 1e-9)
    old = {r.id: r.packets for r in before.rules}
    busy = sorted(((max(r.packets - old.get(r.id, 0), 0), r) for r in after.rules),
                  key=lambda dr: (-dr[0], -dr[1].packets, dr[1].number))
    busy = [(d, r) for d, r in busy if d or r.packets][:TOP_RULES]
    t = Table(box=box.SIMPLE, pad_edge=False, show_edge=False)
    t.add_column("#", justify="right", no_wrap=True)
    t.add_column("rule", overflow="ellipsis", no_wrap=True, max_width=72)
    t.add_column("pps", justify="right", no_wrap=True)
    t.add_column("hits", justify="right", no_wrap=True)
    for d, r in busy:
        t.add_row(str(r.number), str(r.rule), si(d / dt), str(r.packets))
    if not busy:
        t.add_row("", "(no rule hit yet)" if after.rules else "(no rules)", "", "")
    return t


def sources_table(src: Sources, dt: float) -> Table:
    t = Table(box=box.SIMPLE, pad_edge=False, show_edge=False)
    t.add_column("source", no_wrap=True)
    t.add_column("events", justify="right", no_wrap=True)
    t.add_column("~packets", justify="right", no_wrap=True)
    t.add_column("~pps", justify="right", no_wrap=True)
    if not src.every:
        t.add_row(f"(not sampled: {src.note})", "", "", "")
        return t
    top = sorted(src.dropped.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_SOURCES]
    for addr, n in top:
        t.add_row(addr, str(n), str(n * src.every), si(src.last[addr] * src.every / max(dt, 1e-9)))
    if not top:
        t.add_row("(no dropped packet sampled yet)", "", "", "")
    return t


def render(flt: Filter, before: Reading, after: Reading, src: Sources, interval: float,
           live: bool = False) -> RenderableType:
    cfg = flt.config()
    dt = after.at - before.at
    lost = after.stats.lost_events
    new_lost = max(lost - before.stats.lost_events, 0)
    head = Text(f"pyxdp top  {flt.pin_dir}  policy {cfg.policy.label}  rules {cfg.nrules}/{flt.rule_capacity}  "
                f"every {interval:g} s  {time.strftime('%H:%M:%S')}")
    sampled = f"sampled: 1 in {src.every} packets, since start" if src.every else "not sampled"
    foot = Text(f"trace events: {src.events} sampled; lost: {lost} in all, {new_lost} in the last {dt:.1f} s"
                + ("  (Ctrl-C quits)" if live else ""))
    gap = Text("")
    return Group(head, gap, Text("traffic", style="bold"), traffic_table(before, after), gap,
                 Text(f"busiest rules (of {len(after.rules)})", style="bold"), rules_table(before, after), gap,
                 Text(f"top dropped sources ({sampled})", style="bold"), sources_table(src, dt), gap, foot)


# The signal that asked the view to leave (Ctrl-C, SIGTERM), once one has.
_leaving: list[int] = []


def _pause(tracer: Tracer | None, src: Sources, seconds: float) -> None:
    """Wait ``seconds``, taking the trace events that arrive meanwhile;
    Interrupted as soon as a signal asked to leave (within 0.2 s)."""
    end = time.monotonic() + seconds
    src.start_interval()
    while not _leaving and (left := end - time.monotonic()) > 0:
        if tracer is None:
            time.sleep(min(left, 0.2))
        else:
            src.add(tracer.poll(max(1, min(int(left * 1000), 200))))
    if _leaving:
        raise Interrupted(_leaving[0])


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    """Note the signal; the next wait leaves. It raises nothing itself: an
    exception raised from a handler lands wherever Python runs it, also in a
    finalizer (``__del__``) or a C library's callback, where it is printed and
    dropped, and the view would never leave (the signals are ignored by then)."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # once leaving, cleanup is not interrupted again
        signal.signal(sig, signal.SIG_IGN)
    _leaving.append(signum)


def run(flt: Filter, interval: float = 1.0, sample: int = DEFAULT_SAMPLE, once: bool = False,
        console: Console | None = None) -> int:
    """The live view until Ctrl-C or SIGTERM (then 0); with ``once``, one
    snapshot (two readings ``interval`` apart) printed as plain text."""
    if console is None:
        console = Console(highlight=False)
        if once or not console.is_terminal:
            console = Console(highlight=False, color_system=None, force_terminal=False, width=max(console.width, 132))
    plain = once or not console.is_terminal
    _leaving.clear()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    src = Sources(sample)
    tracer: Tracer | None = None
    try:
        if sample:
            current = flt.config().trace_every
            if current:
                src.every = 0
                src.note = (f"tracing is on already, 1 in {current}: a 'pyxdp-load trace' has the events "
                            "(or one was killed; the next 'trace' turns it off)")
            else:
                with signals_deferred():
                    tracer = flt.trace(sample)
                    tracer.__enter__()
        else:
            src.note = "--sample 0"
        try:
            before = read(flt)
            if plain:
                while True:
                    _pause(tracer, src, interval)
                    after = read(flt)
                    console.print(render(flt, before, after, src, interval))
                    if once:
                        return 0
                    console.print()
                    before = after
            from rich.live import Live

            waiting = Text(f"pyxdp top  {flt.pin_dir}: first reading, {interval:g} s ...")
            with Live(waiting, console=console, screen=True, auto_refresh=False, redirect_stdout=False,
                      redirect_stderr=False) as live:
                while True:
                    _pause(tracer, src, interval)
                    after = read(flt)
                    live.update(render(flt, before, after, src, interval, live=True), refresh=True)
                    before = after
        finally:
            if tracer is not None:
                with signals_deferred():
                    tracer.close()
    except Interrupted:
        return 0
    finally:
        sys.stdout.flush()
