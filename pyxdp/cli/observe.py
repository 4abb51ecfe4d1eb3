"""The commands that watch the filter: flows, stats, trace, replay, exporter and top."""

from __future__ import annotations

import sys

from .common import needs, open_filter, pin_dir
from .output import duration, emit, plural

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO

    from .spec import Args


def cmd_flows(args: Args) -> int:
    with open_filter(args, lock=False) as flt:
        flows = flt.flows()
        on = flt.established
        opened = flt.flows_opened()
    if args.json:
        emit({"established": on, "flows": [f.to_dict() for f in flows],
               "opened": {f"ipv{fam}": n for fam, n in opened.items()}})
        return 0
    if not on:
        print("connection state is off ('pyxdp-load state on' turns it on)")
    wl = max([len(f.local) for f in flows] + [5]) + 2
    wr = max([len(f.remote) for f in flows] + [6]) + 2
    print(f"{'proto':8}{'local':{wl}}{'remote':{wr}}{'state':13}{'expires in':>12}")
    for f in flows:
        print(f"{f.proto:8}{f.local:{wl}}{f.remote:{wr}}{f.state.label:13}{duration(f.expires_in):>12}")
    print(f"{plural(len(flows), 'flow')} tracked; {sum(opened.values())} opened since the state was made")
    return 0


def cmd_stats(args: Args) -> int:
    with open_filter(args, lock=False) as flt:
        st = flt.stats()
    if args.json:
        emit({"stats": [ln.to_dict() for ln in st.lines], "lost_events": st.lost_events})
        return 0
    w = max([len(ln.interface) for ln in st.lines] + [9]) + 2
    print(f"{'interface':{w}}{'verdict':8}{'reason':12}{'packets':>14}{'bytes':>16}")
    for ln in sorted(st.lines, key=lambda ln: (ln.interface, ln.verdict, ln.reason)):
        print(f"{ln.interface or '-':{w}}{ln.verdict.label:8}{ln.reason.label:12}{ln.packets:>14}{ln.bytes:>16}")
    print(f"lost trace events: {st.lost_events}")
    return 0


def cmd_trace(args: Args) -> int:
    from ..errors import UsageError

    if args.count is not None and args.count < 1:
        raise UsageError("--count must be 1 or more")
    import signal

    # Ctrl-C and SIGTERM (systemd, timeout, kill) end the loop at its next poll
    # (within 0.2 s), exit 0: the tracer then turns tracing off on its way out
    # instead of leaving it on. The handler only notes the signal: an
    # exception raised from it would land wherever Python runs it, also in a
    # finalizer or the ring buffer's callback, where it is printed and dropped.
    # Once on the way out, further signals are ignored so that the cleanup finishes.
    stopping: list[int] = []

    def _stop(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stopping.append(signum)

    from contextlib import ExitStack

    from ..model.pcap import open_capture
    from ..observe import TraceFilter, TracePcap

    match = TraceFilter.make(args.verdict, args.src, args.port, args.rule)
    to_stdout = args.pcap == "-"  # the capture goes to stdout instead of the lines
    if to_stdout and args.json:
        raise UsageError("--pcap - writes the capture to stdout: leave out --json, or give a file")
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    seen = 0
    pcap: TracePcap | None = None
    with ExitStack() as stack:
        flt = stack.enter_context(open_filter(args, lock=False))
        n = len(flt.rules()) if args.rule is not None else 0
        if args.rule is not None and args.rule > n:
            raise UsageError(f"--rule {args.rule}: there is no rule {args.rule} ({plural(n, 'rule')}; "
                             "see 'pyxdp-load list')")
        if args.pcap is not None:
            out = sys.stdout.buffer if to_stdout else stack.enter_context(open_capture(args.pcap))
            pcap = TracePcap(out)
        tr = stack.enter_context(flt.trace(args.sample, match if match else None))
        if not args.json:
            only = f", only {match}" if match else ""
            into = f", packets into {'stdout' if to_stdout else args.pcap}" if pcap else ""
            print(f"tracing 1 in {args.sample} packets{only}{into} (Ctrl-C stops)", file=sys.stderr, flush=True)
        try:
            while not stopping and (args.count is None or seen < args.count):
                for ev in tr.poll(200):
                    if pcap is not None:
                        pcap.write(ev)
                    if args.json:
                        emit(ev.to_dict())
                        sys.stdout.flush()
                    elif not to_stdout:
                        print(ev, flush=True)
                    seen += 1
                    if args.count is not None and seen >= args.count:
                        break
        finally:
            if pcap is not None and not args.json:
                skipped = f"; {plural(pcap.skipped, 'packet')} came without bytes" if pcap.skipped else ""
                print(f"{plural(pcap.count, 'packet')} written to {'stdout' if to_stdout else args.pcap}{skipped}",
                      file=sys.stderr, flush=True)
    return 0


def cmd_replay(args: Args) -> int:
    from ..errors import UsageError
    from ..model.pcap import read_pcap_records

    try:
        fh: IO[bytes] = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    counts: dict[str, int] = {}
    bad = 0
    with fh, open_filter(args, lock=False) as flt, flt.tester() as tester:
        rules = {r.id: str(r.rule) for r in flt.rules()}
        for rec in read_pcap_records(fh, args.file):
            if rec.error:
                bad += 1
                if args.json:
                    emit({"packet": rec.number, "error": rec.error})
                else:
                    print(f"{rec.number:6} skipped: {rec.error}")
                continue
            r = tester.run(rec.data, rec.number)
            counts[r.verdict.label] = counts.get(r.verdict.label, 0) + 1
            if args.json:
                emit(r.to_dict())
            else:
                ev = r.event
                desc = ev.flow if ev else f"{r.length} bytes"
                rule = f"  (rule {ev.rule}: {rules.get(ev.rule_id, '?')})" if ev and ev.rule else ""
                print(f"{r.number:6} {r.verdict.label:4} {r.reason.label:11} {desc}{rule}")
    total = sum(counts.values())
    if args.json:
        emit({"summary": True, "packets": total, "pass": counts.get("pass", 0), "drop": counts.get("drop", 0),
               "skipped": bad})
    else:
        print(f"{total} packets: {counts.get('pass', 0)} pass, {counts.get('drop', 0)} drop"
              + (f"; {bad} skipped" if bad else ""))
    return 0


def cmd_exporter(args: Args) -> int:
    try:
        from .exporter import serve
    except ImportError as exc:
        return needs("prometheus_client", "exporter", exc)
    return serve(pin_dir(args), args.listen, args.rule_metrics)


def cmd_top(args: Args) -> int:
    import math

    from ..errors import UsageError

    if not (math.isfinite(args.interval) and 0.1 <= args.interval <= 3600):
        raise UsageError(f"--interval must be 0.1 to 3600 seconds, not {args.interval:g}")
    if args.sample < 0:
        raise UsageError("--sample must be 0 (no tracing) or more")
    if not (math.isfinite(args.window) and args.interval <= args.window <= 86400):
        raise UsageError(f"--window must be from the interval ({args.interval:g} s) to 86400 seconds, "
                         f"not {args.window:g}")
    try:
        from .top import run
    except ImportError as exc:
        return needs("rich", "top", exc)
    with open_filter(args, lock=False) as flt:
        return run(flt, interval=args.interval, sample=args.sample, once=args.once, window=args.window)
