"""``pyxdp-load top``: a live view of one pyxdp state, refreshed every interval.

What it shows comes from the difference of two readings of the counters one
interval apart (packets and bits per second per interface, verdict and
reason; every rule with its rate and hits) and from sampled trace events
(the sources with the most dropped packets). Drawn with rich (``Live`` on the
alternate screen of a terminal; plain text with ``--once`` or when the output
is not a terminal).

The rates of dropped sources come from trace events sampled one packet in N
(chosen at random by the datapath): a source with k events in a window of W
seconds sent about k*N/W packets a second, give or take 2*sqrt(k*N*(N-1))/W
(95 %: k is binomial, n packets each taken with chance 1/N, so k*N has the
variance n*(N-1), about k*N*(N-1); none at 1 in 1). One interval holds
too few events for that to mean anything at 1 in 100 (a steady 150 pps
source gives 1.5 events a second), so the rates are taken over the last
``--window`` seconds (default 30), shown with that error, and not shown at
all under SIGNIFICANT events.

In a terminal, keys scroll the rule list (arrows, j/k, PgUp/PgDn, space/b,
Home/End, g/G), change the sort (s: by rate with drops first, by total, in
list order) and the sampling (+: ten times more events, -: ten times fewer;
only while top has tracing to itself), and q quits.

Tracing is turned on for the view only when it is off (a running ``trace``
has the ring buffer to itself) and turned off again on the way out, also on
Ctrl-C or SIGTERM: SIGINT and SIGTERM are held while tracing is switched,
and the view leaves at its next wait (within 0.2 s of the signal).

Needs ``rich`` (``pip install 'pyxdp[top]'``); nothing else in pyxdp imports
this module."""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, NamedTuple

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..layout import Action, Verdict
from ..store.lock import signals_deferred

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import FrameType

    from rich.console import RenderableType

    from ..filter import Filter
    from ..observe import Event, Stats, Tracer
    from ..store.ruleset import RuleCount

TOP_SOURCES = 10
DEFAULT_SAMPLE = 100
DEFAULT_WINDOW = 30.0
SIGNIFICANT = 5  # sampled events of a source in the window below which its rate is not shown
SAMPLE_STEPS = (1, 10, 100, 1000, 10000)  # what + and - step through
SORTS = ("rate", "total", "list")
SORT_TEXT = {"rate": "by rate, drops first", "total": "by total, drops first", "list": "in list order"}


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM: leave, restoring tracing and the terminal."""


class Reading(NamedTuple):
    at: float  # time.monotonic()
    stats: Stats
    rules: list[RuleCount]


def read(flt: Filter) -> Reading:
    return Reading(time.monotonic(), flt.stats(), flt.rule_counts())


class Estimate(NamedTuple):
    """A dropped source's packets per second over the window, from its sampled events."""

    events: int  # in the window
    pps: float
    error: float  # 95 % sampling error of pps


class Sources:
    """Dropped packets per source address, from sampled trace events: totals
    since the start, and per interval (a bucket) for the last ``window``
    seconds. Each event weighs the N it was sampled at, so a change of the
    sampling keeps the estimates right."""

    def __init__(self, every: int, window: float = DEFAULT_WINDOW, now: float | None = None) -> None:
        self.every = every  # one event per this many packets; 0: not sampled
        self.window = window
        self.note = ""  # why there are no samples, when there are none
        self.dropped: Counter[str] = Counter()  # events since the start
        self.packets: Counter[str] = Counter()  # the packets they stand for
        self.events = 0
        self._start = time.monotonic() if now is None else now  # of the interval being counted
        self._current: dict[str, list[float]] = {}  # source -> [events, sum of N, sum of N(N-1)]
        self._buckets: deque[tuple[float, float, dict[str, list[float]]]] = deque()  # (start, end, counts)

    def add(self, events: Iterable[Event]) -> None:
        n = self.every
        for ev in events:
            self.events += 1
            if ev.verdict == Verdict.DROP:
                src = ev.src or "(not IP)"
                self.dropped[src] += 1
                self.packets[src] += n
                c = self._current.setdefault(src, [0, 0, 0])  # events, packets, variance of the packets
                c[0] += 1
                c[1] += n
                c[2] += n * (n - 1)

    def close_interval(self, now: float) -> None:
        """The events since the last call make one bucket; buckets older than the window go."""
        self._buckets.append((self._start, now, self._current))
        self._start, self._current = now, {}
        while self._buckets and self._buckets[0][1] <= now - self.window:
            self._buckets.popleft()

    def span(self) -> float:
        """Seconds the buckets cover (less than the window at first)."""
        return self._buckets[-1][1] - self._buckets[0][0] if self._buckets else 0.0

    def estimates(self) -> dict[str, Estimate]:
        span = max(self.span(), 1e-9)
        total: dict[str, list[float]] = {}
        for _s, _e, counts in self._buckets:
            for src, (k, w, w2) in counts.items():
                t = total.setdefault(src, [0, 0, 0])
                t[0] += k
                t[1] += w
                t[2] += w2
        return {src: Estimate(int(k), w / span, 2 * math.sqrt(w2) / span) for src, (k, w, w2) in total.items()}


def si(value: float) -> str:
    """1234567 -> '1.2M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _iface(name: str) -> str:
    return name or "-"


def _table(*columns: tuple[str, bool]) -> Table:
    t = Table(box=box.SIMPLE, pad_edge=False, show_edge=False)
    for name, right in columns:
        t.add_column(name, justify="right" if right else "left", no_wrap=True)
    return t


def traffic_table(before: Reading, after: Reading, sort: str = "rate") -> Table:
    dt = max(after.at - before.at, 1e-9)
    old = {(ln.interface, ln.verdict, ln.reason): ln for ln in before.stats.lines}
    t = _table(("interface", False), ("verdict", False), ("reason", False), ("pps", True), ("bit/s", True),
               ("packets", True), ("bytes", True))
    rows = []
    for ln in after.stats.lines:
        prev = old.get((ln.interface, ln.verdict, ln.reason))
        dp = max(ln.packets - (prev.packets if prev else 0), 0)
        db = max(ln.bytes - (prev.bytes if prev else 0), 0)
        rows.append((dp, db, ln))
    if sort == "list":
        rows.sort(key=lambda r: (r[2].interface, r[2].verdict, r[2].reason))
    else:
        rows.sort(key=lambda r: (r[2].verdict != Verdict.DROP, -(r[0] if sort == "rate" else r[2].packets),
                                 r[2].interface, r[2].verdict, r[2].reason))
    for dp, db, ln in rows:
        t.add_row(_iface(ln.interface), ln.verdict.label, ln.reason.label, si(dp / dt), si(db * 8 / dt),
                  str(ln.packets), str(ln.bytes), style="bold" if ln.verdict == Verdict.DROP and dp else None)
    if not rows:
        t.add_row("(no packets yet)", "", "", "", "", "", "")
    return t


def sorted_rules(before: Reading, after: Reading, sort: str = "rate") -> list[tuple[int, RuleCount]]:
    """Every rule with its packets in the interval, in the order ``sort`` asks."""
    old = {r.id: r.packets for r in before.rules}
    rows = [(max(r.packets - old.get(r.id, 0), 0), r) for r in after.rules]
    if sort == "rate":
        rows.sort(key=lambda dr: (dr[1].action != Action.DENY, -dr[0], -dr[1].packets, dr[1].number))
    elif sort == "total":
        rows.sort(key=lambda dr: (dr[1].action != Action.DENY, -dr[1].packets, -dr[0], dr[1].number))
    return rows


def rules_table(rows: list[tuple[int, RuleCount]], dt: float, empty: str) -> Table:
    t = Table(box=box.SIMPLE, pad_edge=False, show_edge=False)
    t.add_column("#", justify="right", no_wrap=True)
    t.add_column("rule", overflow="ellipsis", no_wrap=True, max_width=72)
    t.add_column("pps", justify="right", no_wrap=True)
    t.add_column("hits", justify="right", no_wrap=True)
    for d, r in rows:
        t.add_row(str(r.number), r.text, si(d / max(dt, 1e-9)), str(r.packets),
                  style="bold" if r.action == Action.DENY and d else None)
    if not rows:
        t.add_row("", empty, "", "")
    return t


def sources_table(src: Sources) -> Table:
    t = _table(("source", False), ("events", True), ("~packets", True), ("~pps", True), ("±", True))
    if not src.every:
        t.add_row(f"(not sampled: {src.note})", "", "", "", "")
        return t
    est = src.estimates()
    none = Estimate(0, 0.0, 0.0)
    top = sorted(src.dropped, key=lambda a: (-est.get(a, none).pps, -src.packets[a], a))[:TOP_SOURCES]
    for addr in top:
        e = est.get(addr, none)
        shown = e.events >= SIGNIFICANT
        t.add_row(addr, str(src.dropped[addr]), str(src.packets[addr]), si(e.pps) if shown else "-",
                  f"±{si(e.error)}" if shown else "")
    if not top:
        t.add_row("(no dropped packet sampled yet)", "", "", "", "")
    return t


class View:
    """What the keys change: the sort, the first rule row shown, the rows the
    screen has room for (None: every rule, as plain text prints them)."""

    def __init__(self) -> None:
        self.sort = "rate"
        self.offset = 0
        self.rows: int | None = None
        self.quit = False

    def key(self, name: str, n_rules: int) -> None:
        page = max((self.rows or 1) - 1, 1)
        if name == "sort":
            self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
            self.offset = 0
        elif name == "quit":
            self.quit = True
        else:
            step = {"up": -1, "down": 1, "pgup": -page, "pgdn": page, "home": -n_rules, "end": n_rules}.get(name, 0)
            self.offset += step
        self.clamp(n_rules)

    def clamp(self, n_rules: int) -> None:
        last = max(n_rules - (self.rows if self.rows is not None else n_rules), 0)
        self.offset = min(max(self.offset, 0), last)


KEYS = {b"\x1b[A": "up", b"\x1bOA": "up", b"k": "up", b"\x1b[B": "down", b"\x1bOB": "down", b"j": "down",
        b"\x1b[5~": "pgup", b"b": "pgup", b"\x1b[6~": "pgdn", b" ": "pgdn", b"\x1b[H": "home", b"\x1b[1~": "home",
        b"\x1bOH": "home", b"g": "home", b"\x1b[F": "end", b"\x1b[4~": "end", b"\x1bOF": "end", b"G": "end",
        b"s": "sort", b"+": "more", b"=": "more", b"-": "less", b"q": "quit", b"Q": "quit"}


def keys_in(data: bytes) -> list[str]:
    """The keys in what the terminal sent, longest sequence first (unknown bytes are skipped)."""
    out, i = [], 0
    while i < len(data):
        for size in (4, 3, 2, 1):
            name = KEYS.get(data[i:i + size])
            if name:
                out.append(name)
                i += size
                break
        else:
            i += 1
    return out


def render(flt: Filter, before: Reading, after: Reading, src: Sources, interval: float, view: View | None = None,
           height: int | None = None, console: Console | None = None, live: bool = False) -> RenderableType:
    """The view. With ``height`` (and ``console``), the rule list shows as
    many rules as fit and ``view`` says from where; otherwise every rule."""
    view = view or View()
    cfg = flt.config()
    dt = after.at - before.at
    lost = after.stats.lost_events
    new_lost = max(lost - before.stats.lost_events, 0)
    head = Text(f"pyxdp top  {flt.pin_dir}  policy {cfg.policy.label}  rules {cfg.nrules}/{flt.rule_capacity}  "
                f"every {interval:g} s  {time.strftime('%H:%M:%S')}")
    if src.every:
        span = src.span()
        sampled = (f"sampled: 1 in {src.every} packets; ~pps over the last {span:.0f} s, ± 95% sampling error, "
                   f"-: under {SIGNIFICANT} events")
    else:
        sampled = "not sampled"
    foot = Text(f"trace events: {src.events} sampled; lost: {lost} in all, {new_lost} in the last {dt:.1f} s")
    gap = Text("")
    rows = sorted_rules(before, after, view.sort)
    n = len(rows)
    top_parts: list[RenderableType] = [head, gap, Text("traffic", style="bold"),
                                       traffic_table(before, after, view.sort), gap]
    bottom: list[RenderableType] = [gap, Text(f"top dropped sources ({sampled})", style="bold"), sources_table(src),
                                    gap, foot]
    if live:
        keys = "keys: ↑↓ PgUp PgDn Home End scroll, s sort, + - sampling, q quits"
        bottom.append(Text(keys + (" (sampling: not top's)" if not src.every else "")))
    if height is not None and console is not None:
        used = len(console.render_lines(Group(*top_parts, *bottom), console.options, pad=False))
        view.rows = max(height - used - 3, 3)  # the title, header and rule line of the rule table
    else:
        view.rows = None
    view.clamp(n)
    shown = rows if view.rows is None else rows[view.offset:view.offset + view.rows]
    where = f"{view.offset + 1}-{view.offset + len(shown)} of {n}" if shown and len(shown) < n else f"{n}"
    title = Text(f"rules ({where}, {SORT_TEXT[view.sort]})", style="bold")
    table = rules_table(shown, dt, "(no rules)")
    return Group(*top_parts, title, table, *bottom)


# The signal that asked the view to leave (Ctrl-C, SIGTERM), once one has.
_leaving: list[int] = []


def _wait(tracer: Tracer | None, src: Sources, until: float, keys_fd: int | None) -> bytes:
    """Take the trace events that arrive until ``until`` (monotonic) or a key
    is pressed: the key's bytes (b"" when the time came). Interrupted as
    soon as a signal asked to leave (within 0.2 s)."""
    import select

    while not _leaving:
        left = until - time.monotonic()
        if left <= 0:
            return b""
        if keys_fd is not None:
            ready, _, _ = select.select([keys_fd], [], [], 0 if tracer is not None else min(left, 0.2))
            if ready:
                data = os.read(keys_fd, 64)
                if data:
                    return data
        if tracer is not None:
            src.add(tracer.poll(max(1, min(int(left * 1000), 50 if keys_fd is not None else 200))))
        elif keys_fd is None:
            time.sleep(min(left, 0.2))
    raise Interrupted(_leaving[0])


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    """Note the signal; the next wait leaves. It raises nothing itself: an
    exception raised from a handler lands wherever Python runs it, also in a
    finalizer (``__del__``) or a C library's callback, where it is printed and
    dropped, and the view would never leave (the signals are ignored by then)."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # once leaving, cleanup is not interrupted again
        signal.signal(sig, signal.SIG_IGN)
    _leaving.append(signum)


def _resample(tracer: Tracer | None, src: Sources, name: str) -> None:
    """+ and -: ten times more or fewer sampled events, while top owns tracing."""
    if tracer is None or not src.every:
        return
    steps = sorted(set(SAMPLE_STEPS) | {src.every})
    i = steps.index(src.every) + (-1 if name == "more" else 1)
    if 0 <= i < len(steps) and steps[i] != src.every:
        with signals_deferred():
            tracer.resample(steps[i])
        src.every = steps[i]


def run(flt: Filter, interval: float = 1.0, sample: int = DEFAULT_SAMPLE, once: bool = False,
        console: Console | None = None, window: float = DEFAULT_WINDOW) -> int:
    """The live view until Ctrl-C, SIGTERM or q (then 0); with ``once``, one
    snapshot (two readings ``interval`` apart) printed as plain text."""
    if console is None:
        console = Console(highlight=False)
        if once or not console.is_terminal:
            console = Console(highlight=False, color_system=None, force_terminal=False, width=max(console.width, 132))
    plain = once or not console.is_terminal
    _leaving.clear()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    src = Sources(sample, window)
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
            src.close_interval(before.at)
            if plain:
                while True:
                    _wait(tracer, src, time.monotonic() + interval, None)
                    after = read(flt)
                    src.close_interval(after.at)
                    console.print(render(flt, before, after, src, interval))
                    if once:
                        return 0
                    console.print()
                    before = after
            return _live(flt, console, tracer, src, before, interval)
        finally:
            if tracer is not None:
                with signals_deferred():
                    tracer.close()
    except Interrupted:
        return 0
    finally:
        sys.stdout.flush()


def _live(flt: Filter, console: Console, tracer: Tracer | None, src: Sources, before: Reading,
          interval: float) -> int:
    """The view on the terminal's alternate screen, with keys read from stdin in cbreak mode."""
    import termios
    import tty

    from rich.live import Live

    keys_fd: int | None = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    saved = None
    if keys_fd is not None:
        try:
            saved = termios.tcgetattr(keys_fd)
            tty.setcbreak(keys_fd)  # keys one by one, not echoed; Ctrl-C still sends SIGINT
        except termios.error:
            keys_fd = None
    view = View()
    try:
        waiting = Text(f"pyxdp top  {flt.pin_dir}: first reading, {interval:g} s ...")
        with Live(waiting, console=console, screen=True, auto_refresh=False, redirect_stdout=False,
                  redirect_stderr=False) as live:
            after: Reading | None = None
            due = time.monotonic() + interval
            while not view.quit:
                pressed = _wait(tracer, src, due, keys_fd)
                if pressed:
                    for name in keys_in(pressed):
                        if name in ("more", "less"):
                            _resample(tracer, src, name)
                        else:
                            view.key(name, len(after.rules) if after else 0)
                    if after is None:
                        continue
                else:
                    before, after = (after or before), read(flt)
                    src.close_interval(after.at)
                    due = max(due + interval, time.monotonic())
                live.update(render(flt, before, after, src, interval, view, console.size.height, console, True),
                            refresh=True)
    finally:
        if saved is not None and keys_fd is not None:
            termios.tcsetattr(keys_fd, termios.TCSADRAIN, saved)
    return 0
