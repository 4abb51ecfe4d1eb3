"""Prometheus metrics of one pyxdp state: ``pyxdp-load exporter``.

A custom collector reads the pinned maps on every scrape through the public
API (:meth:`pyxdp.Filter.open` with ``lock=False``: a scrape never waits for,
or blocks, a writer). It opens the state afresh each time (a fraction of a
millisecond), so a state removed and made again is followed without a
restart, and a scrape while there is no state still answers, with
``pyxdp_up 0``. Nothing is exported per set element: a set is two series
(IPv4 and IPv6 element counts) whatever its size, and those counts are read
from the per-set counters, not by walking the elements.

Each metric family comes from one function of :func:`all_families` taking
the open :class:`~pyxdp.Filter`; another family is one more such function in
that tuple. Per-rule series are keyed by the rule's stable id (its number
and text are labels of ``pyxdp_rule_info`` only, so an insert renames no
counter), capped by ``--rule-metrics``, and formatted here
(:class:`TextFamily`): prometheus_client's samples cost ~25 us each, which
made a scrape of 8,192 rules take 0.65 s.

Needs ``prometheus_client`` (``pip install 'pyxdp[exporter]'``); nothing
else in pyxdp imports this module."""

from __future__ import annotations

import ipaddress
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from ..errors import NotLoaded, PyxdpError, UsageError
from ..layout import Action
from ..store.attach import iface_label

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from ..filter import Filter
    from ..store.ruleset import RuleCount

DEFAULT_PORT = 9436
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"

_TRAFFIC_LABELS = ("interface", "verdict", "reason")


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) -> (address, port). The host is
    an IP address (``0.0.0.0`` or ``::`` for every address); port 0 asks the
    kernel for a free port."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise UsageError(f"bad --listen {text!r}: give ADDRESS:PORT, e.g. {DEFAULT_LISTEN} or [::1]:{DEFAULT_PORT}")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"bad --listen {text!r}: {host!r} is not an IP address") from None
    if addr.version == 6 and not bracketed:
        raise UsageError(f"bad --listen {text!r}: write an IPv6 address in brackets, e.g. [{host}]:{port}")
    return str(addr), int(port)


# ---- the metric families: each reads one part of the state ---------------------------


def traffic(flt: Filter) -> Iterator[Metric]:
    """Packets and bytes per (interface, verdict, reason); lost trace events."""
    st = flt.stats()
    packets = CounterMetricFamily("pyxdp_packets", "Packets the filter decided, by interface (empty: not "
                                  "attributed to one), verdict and reason.", labels=_TRAFFIC_LABELS)
    octets = CounterMetricFamily("pyxdp_bytes", "Bytes of the packets the filter decided, by interface, verdict "
                                 "and reason.", labels=_TRAFFIC_LABELS)
    for ln in sorted(st.lines, key=lambda ln: (ln.interface, ln.verdict, ln.reason)):
        labels = (ln.interface, ln.verdict.label, ln.reason.label)
        packets.add_metric(labels, ln.packets)
        octets.add_metric(labels, ln.bytes)
    yield packets
    yield octets
    yield CounterMetricFamily("pyxdp_trace_events_lost", "Trace events the datapath dropped because the ring "
                              "buffer was full.", value=st.lost_events)


RULE_METRICS_DEFAULT = "top:1024"


def parse_rule_metrics(text: str) -> int | None:
    """``--rule-metrics``: ``all`` -> None (every rule), ``off`` -> 0,
    ``top:N`` -> N (the N rules with the most packets)."""
    if text == "all":
        return None
    if text == "off":
        return 0
    kind, _sep, n = text.partition(":")
    if kind == "top" and n.isascii() and n.isdigit() and 1 <= int(n) <= 1_000_000:
        return int(n)
    raise UsageError(f"bad --rule-metrics {text!r}: all, off or top:N (N from 1), e.g. {RULE_METRICS_DEFAULT}")


class TextFamily(NamedTuple):
    """A metric family already in the text format (0.0.4): what a family of
    thousands of series is, since building prometheus_client's samples and
    formatting them costs ~25 us a series (0.6 s for 8,192 rules)."""

    name: str
    type: str  # counter, gauge
    help: str
    lines: list[str]  # 'name{labels} value'

    def text(self) -> str:
        helptext = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        body = "\n".join(self.lines)
        return f"# HELP {self.name} {helptext}\n# TYPE {self.name} {self.type}\n{body}\n" if body else (
            f"# HELP {self.name} {helptext}\n# TYPE {self.name} {self.type}\n")


def label_value(text: str) -> str:
    """A label value escaped for the text format."""
    if "\\" in text or '"' in text or "\n" in text:
        return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return text


Part = Metric | TextFamily


_ACTIONS = {a: a.name.lower() for a in Action}


def rule_labels(r: RuleCount) -> str:
    """The labels of a rule's ``pyxdp_rule_info`` series (its id, number,
    action, text and comment), formatted. A rule's other labels go here too.
    The comment is the stored text's ``comment 'TEXT'`` (its last words: a
    comment holds no quote), taken off the text."""
    text, sep, comment = r.text.rpartition(" comment '")
    if not (sep and comment.endswith("'")):
        text, comment = r.text, "'"
    return (f'id="{r.id}",rule="{r.number}",action="{_ACTIONS[r.action]}",text="{label_value(text)}",'
            f'comment="{label_value(comment[:-1])}"')


def rules_family(limit: int | None) -> Family:
    """Hits per rule keyed by the rule's stable id, and a ``pyxdp_rule_info``
    series per rule with its number, action and text; for every rule
    (``limit`` None), the ``limit`` with the most packets (ties: the first
    in the list), or none (0). Then how many rules there are and can be, and
    how many have series."""

    def rules(flt: Filter) -> Iterator[Part]:
        shown = flt.rule_counts(limit)
        yield TextFamily("pyxdp_rule_packets_total", "counter", "Packets the rule decided, by the rule's stable id "
                         "(pyxdp_rule_info gives its number and text).",
                         [f'pyxdp_rule_packets_total{{id="{r.id}"}} {r.packets}' for r in shown])
        yield TextFamily("pyxdp_rule_bytes_total", "counter", "Bytes of the packets the rule decided, by the rule's "
                         "stable id.", [f'pyxdp_rule_bytes_total{{id="{r.id}"}} {r.bytes}' for r in shown])
        yield TextFamily("pyxdp_rule_info", "gauge", "A rule in the live list (value 1): its stable id, number "
                         "(position, as 'list' shows it), action, canonical text and comment.",
                         [f"pyxdp_rule_info{{{rule_labels(r)}}} 1" for r in shown])
        yield GaugeMetricFamily("pyxdp_rules", "Rules in the live rule list.", value=flt.config().nrules)
        yield GaugeMetricFamily("pyxdp_rules_exported", "Rules with per-rule series in this scrape "
                                "(--rule-metrics).", value=len(shown))
        yield GaugeMetricFamily("pyxdp_rule_capacity", "Rules the rule tables can hold.", value=flt.rule_capacity)

    return rules


def sets(flt: Filter) -> Iterator[Metric]:
    """Elements per set and family, from the control plane's tally: no walk
    of the elements, also while a change works on a set (the tally may then
    already count elements the change has not committed yet)."""
    elements = GaugeMetricFamily("pyxdp_set_elements", "Elements of the set, by address family (expired ones "
                                 "count until the sweeper removes them).", labels=("set", "family"))
    for s in sorted(flt.sets(exact=False), key=lambda s: s.name):
        elements.add_metric((s.name, "ipv4"), s.n4)
        elements.add_metric((s.name, "ipv6"), s.n6)
    yield elements
    yield GaugeMetricFamily("pyxdp_set_element_capacity", "Set elements each address family can hold, all sets "
                            "together.", value=flt.capacity)


def config(flt: Filter) -> Iterator[Metric]:
    """The policy and the trace sampling."""
    cfg = flt.config()
    yield InfoMetricFamily("pyxdp_policy", "The verdict for packets no rule matches.",
                           value={"policy": cfg.policy.label})
    yield GaugeMetricFamily("pyxdp_trace_sampling", "Tracing samples one packet in this many; 0: tracing is off.",
                            value=cfg.trace_every)


def connections(flt: Filter) -> Iterator[Metric]:
    """Connection state: on or off, the flows the host opened (a counter the
    egress program keeps: counting live flows would walk the tables), and
    the tables' size."""
    yield GaugeMetricFamily("pyxdp_connection_state", "1 when replies to connections the host opened pass before "
                            "the rules; 0 when connection state is off.", value=int(flt.established))
    opened = CounterMetricFamily("pyxdp_flows_opened", "Connections (TCP, UDP, ICMP echo) the host opened that the "
                                 "egress program started tracking, by address family.", labels=("family",))
    for fam, n in sorted(flt.flows_opened().items()):
        opened.add_metric((f"ipv{fam}",), n)
    yield opened
    yield GaugeMetricFamily("pyxdp_flow_capacity", "Tracked connections each address family's table holds (the "
                            "least recently used goes when full).", value=flt.state.flow_capacity)


def attachments(flt: Filter) -> Iterator[Metric]:
    """The interfaces the program is attached to, each checked against what
    the kernel runs now."""
    info = InfoMetricFamily("pyxdp_attached", "An interface this state's program was attached to.",
                            labels=("interface", "netns", "mode", "prog_id"))
    live = GaugeMetricFamily("pyxdp_interface_attached", "1 while the interface runs this state's program; 0 when "
                             "the record remains but it no longer does (see 'pyxdp-load status').",
                             labels=("interface", "netns"))
    for a in flt.interfaces():
        info.add_metric((iface_label(a.ifname, a.netns), a.netns or "", a.mode, str(a.prog_id)), {})
        live.add_metric((iface_label(a.ifname, a.netns), a.netns or ""), 1 if a.attached else 0)
    yield info
    yield live


Family = Callable[["Filter"], Iterable[Part]]


def all_families(rule_metrics: int | None = parse_rule_metrics(RULE_METRICS_DEFAULT)) -> tuple[Family, ...]:
    """Every family, with per-rule series as ``rule_metrics`` (see
    :func:`parse_rule_metrics`) says."""
    return (traffic, rules_family(rule_metrics), sets, config, connections, attachments)


class _Read:
    """prometheus_client's view of the metrics read for the scrape being answered."""

    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def collect(self) -> list[Metric]:
        return self.metrics


class StateCollector:
    """Reads the state in ``pin_dir`` on each :meth:`collect` (one scrape at a
    time). A state that is missing or unreadable gives ``pyxdp_up 0`` and no
    other pyxdp series (never half of them); the reason goes to ``log`` once
    each time it changes."""

    def __init__(self, pin_dir: str, families: tuple[Family, ...] | None = None,
                 log: Callable[[str], None] | None = None, extra: Iterable[Any] = ()) -> None:
        from prometheus_client import CollectorRegistry, ProcessCollector

        self.pin_dir = pin_dir
        self.families = families if families is not None else all_families()
        self._log = log or (lambda msg: None)
        self._lock = threading.Lock()
        self._last_problem: str | None = None
        self._read = _Read()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self._read)
        ProcessCollector(registry=self._registry)
        for c in extra:  # another part's own series (the agent's), after the process's
            self._registry.register(c)

    def read(self) -> list[Part]:
        """Every family's metrics from the state now (raises NotLoaded, or
        another PyxdpError/OSError when it cannot be read)."""
        from ..filter import Filter

        with Filter.open(self.pin_dir, lock=False) as flt:
            out: list[Part] = []
            for family in self.families:
                out.extend(family(flt))
            return out

    def collect(self) -> list[Part]:
        """``pyxdp_up``, every family's metrics, ``pyxdp_scrape_duration_seconds``."""
        with self._lock:
            return self._collect()

    def _collect(self) -> list[Part]:
        start = time.perf_counter()
        problem = None
        try:
            metrics = self.read()
        except NotLoaded as exc:
            metrics, problem = [], f"no state: {exc}"
        except (PyxdpError, OSError) as exc:
            metrics, problem = [], f"cannot read the state: {exc}"
        except Exception as exc:  # noqa: BLE001 - a scrape still answers; the log says what broke
            metrics, problem = [], f"cannot read the state: {type(exc).__name__}: {exc}"
        if problem != self._last_problem:
            self._log(problem or f"reading the state in {self.pin_dir}")
            self._last_problem = problem
        took = time.perf_counter() - start
        up = GaugeMetricFamily("pyxdp_up", "1 when the pin directory holds pyxdp state that could be read; 0 "
                               "otherwise (then no other pyxdp_ series is exported).", value=0 if problem else 1)
        duration = GaugeMetricFamily("pyxdp_scrape_duration_seconds", "Time this scrape took to read the state.",
                                     value=took)
        return [up, *metrics, duration]

    def exposition(self) -> bytes:
        """A scrape's answer in the text format 0.0.4: the state's metrics,
        then the process's own. Families of many series come formatted
        (:class:`TextFamily`); prometheus_client formats the others."""
        from prometheus_client import generate_latest

        with self._lock:
            parts = self._collect()
            self._read.metrics = [p for p in parts if not isinstance(p, TextFamily)]
            try:
                head = generate_latest(self._registry)
            finally:
                self._read.metrics = []
        return head + "".join(p.text() for p in parts if isinstance(p, TextFamily)).encode()


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


Route = Callable[[], "tuple[int, str]"]  # a plain-text page: (HTTP status, text)


def make_app(collector: StateCollector, routes: Mapping[str, Route] | None = None,
             ) -> Callable[[dict[str, Any], Callable[..., Any]], list[bytes]]:
    """The WSGI application: GET of a path in ``routes`` (e.g. ``/healthz``)
    answers with its plain-text page; any other path but /favicon.ico with
    the metrics, gzipped when the client accepts it (as Prometheus does)."""
    import gzip
    from http import HTTPStatus

    pages = dict(routes or {})

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["REQUEST_METHOD"] != "GET":
            start_response("405 Method Not Allowed", [("Allow", "GET"), ("Content-Type", "text/plain")])
            return [b"use GET\n"]
        if environ.get("PATH_INFO") == "/favicon.ico":
            start_response("200 OK", [])
            return [b""]
        page = pages.get(environ.get("PATH_INFO", ""))
        if page is not None:
            code, text = page()
            start_response(f"{code} {HTTPStatus(code).phrase}", [("Content-Type", "text/plain; charset=utf-8")])
            return [text.encode() + b"\n"]
        body = collector.exposition()
        headers = [("Content-Type", CONTENT_TYPE)]
        accepted = {e.split(";")[0].strip() for e in environ.get("HTTP_ACCEPT_ENCODING", "").split(",")}
        if "gzip" in accepted:
            body = gzip.compress(body, compresslevel=1)  # 1.6 MB: 4 ms to 193 kB; level 9: 106 ms to 172 kB
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    return app


BACKLOG = 128  # connections the kernel queues before they are accepted
WORKERS = 4  # threads that answer requests
IDLE_TIMEOUT = 10.0  # seconds a connection may wait before its request arrives, or between its bytes
MAX_WAITING = 256  # open connections waiting for their request; past it the longest waiting is closed


class _Waiting:
    """Accepted connections waiting for their request, in one thread with a
    selector: an idle client costs a socket, not a thread. A connection
    whose first bytes arrive goes to one of ``workers`` threads, which
    ``serve(sock, addr)``; one idle for ``idle`` seconds, or the longest
    waiting when ``most`` are, is closed with ``drop(sock)``. So however
    many clients connect and say nothing, the threads stay few and a scrape
    is answered."""

    def __init__(self, serve: Callable[[Any, Any], None], drop: Callable[[Any], None], workers: int,
                 idle: float, most: int) -> None:
        import selectors
        import socket
        from concurrent.futures import ThreadPoolExecutor

        self._serve, self._drop, self.idle, self.most = serve, drop, idle, most
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._new: list[tuple[Any, Any]] = []
        self._new_lock = threading.Lock()
        self._waiting: dict[Any, tuple[Any, float]] = {}  # sock -> (address, deadline), oldest first
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="pyxdp-exporter-worker")
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pyxdp-exporter-waiting", daemon=True)
        self._thread.start()

    def add(self, sock: Any, addr: Any) -> None:
        """Called by the accepting thread for each new connection."""
        with self._new_lock:
            self._new.append((sock, addr))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # full: the waiting thread has a wake-up to read already
            pass

    def _run(self) -> None:
        import selectors

        while not self._closed:
            events = self._sel.select(timeout=min(1.0, self.idle))
            now = time.monotonic()
            for key, _mask in events:
                if key.fileobj is self._wake_r:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                    continue
                sock = key.fileobj
                self._sel.unregister(sock)
                addr, _deadline = self._waiting.pop(sock)
                self._pool.submit(self._serve, sock, addr)
            with self._new_lock:
                new, self._new = self._new, []
            for sock, addr in new:
                self._waiting[sock] = (addr, now + self.idle)
                self._sel.register(sock, selectors.EVENT_READ)
            while len(self._waiting) > self.most:
                self._forget(next(iter(self._waiting)))
            for sock in [s for s, (_a, deadline) in self._waiting.items() if deadline <= now]:
                self._forget(sock)

    def _forget(self, sock: Any) -> None:
        self._sel.unregister(sock)
        del self._waiting[sock]
        self._drop(sock)

    def close(self) -> None:
        self._closed = True
        self._wake()
        self._thread.join(5)
        for sock in list(self._waiting):
            self._forget(sock)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()


def make_server(collector: StateCollector, host: str, port: int, idle: float = IDLE_TIMEOUT, *,
                routes: Mapping[str, Route] | None = None) -> WSGIServer:
    """An HTTP server serving ``collector``'s metrics, with the process's
    own, bound to ``host``:``port`` only (listen backlog BACKLOG); ``routes``:
    other paths' plain-text pages (:func:`make_app`). Accepted
    connections wait for their request without a thread each (see
    :class:`_Waiting`: WORKERS threads answer, a connection silent for
    ``idle`` seconds is closed, at most MAX_WAITING wait); a request must
    arrive within ``idle`` seconds of its last bytes. Raises OSError when
    it cannot bind."""
    import socket
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(WSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        request_queue_size = BACKLOG
        waiting: _Waiting

        def server_bind(self) -> None:
            # HTTPServer.server_bind would look the address up in DNS (getfqdn): not needed to serve
            socketserver.TCPServer.server_bind(self)
            self.server_name = host
            self.server_port = self.server_address[1]
            self.setup_environ()
            self.waiting = _Waiting(self._answer, self.shutdown_request, WORKERS, idle, MAX_WAITING)

        def process_request(self, request: Any, client_address: Any) -> None:
            self.waiting.add(request, client_address)  # its request is read once it arrives

        def _answer(self, request: Any, client_address: Any) -> None:
            try:
                self.finish_request(request, client_address)
            except TimeoutError:
                pass  # its bytes stalled for the idle timeout: closed without a word (a slow client is no news)
            except Exception:  # noqa: BLE001 - said by handle_error, in one line
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

        def server_close(self) -> None:
            super().server_close()
            if hasattr(self, "waiting"):
                self.waiting.close()

        def handle_error(self, request: object, client_address: object) -> None:
            # a client that hangs up midway: one line, not socketserver's traceback
            exc = sys.exc_info()[1]
            print(f"pyxdp-load exporter: request from {client_address} failed: {exc!r}", file=sys.stderr,
                  flush=True)

    class Quiet(WSGIRequestHandler):
        timeout = idle  # a request's bytes (and the answer's reader) may stall this long, no longer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return make_server(host, port, make_app(collector, routes), server_class=Server, handler_class=Quiet)


def logger(name: str) -> Callable[[str], None]:
    """One line on stderr per message, prefixed ``pyxdp-load NAME:`` (journald keeps it)."""

    def log(msg: str) -> None:
        print(f"pyxdp-load {name}: {msg}", file=sys.stderr, flush=True)

    return log


def serve(pin_dir: str, listen: str | None = DEFAULT_LISTEN, rule_metrics: str = RULE_METRICS_DEFAULT, *,
          name: str = "exporter", extra: Iterable[Any] = (), routes: Mapping[str, Route] | None = None,
          work: tuple[Callable[[], None], Callable[[], None]] | None = None) -> int:
    """``pyxdp-load exporter`` (and the agent's server): serve until SIGTERM
    or SIGINT, then return 0. ``listen`` None: no server. ``extra``: more
    collectors; ``routes``: plain-text pages beside /metrics; ``work``:
    (run, stop) of a loop run in a thread of its own meanwhile, stopped (and
    waited for) before the server."""
    import errno
    import signal

    host, port = parse_listen(listen) if listen is not None else ("", 0)
    limit = parse_rule_metrics(rule_metrics)
    log = logger(name)
    collector = StateCollector(pin_dir, all_families(limit), log=log, extra=extra)
    # SIGINT and SIGTERM wait for sigwait() below; threads started from here on keep them blocked
    stop = {signal.SIGINT, signal.SIGTERM}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    try:
        server = None
        if listen is not None:
            try:
                server = make_server(collector, host, port, routes=routes)
            except OSError as exc:
                why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
                raise _ListenError(f"cannot listen on {listen}: {why}") from None
        threads = []
        if server is not None:
            threads.append(threading.Thread(target=server.serve_forever, name=f"pyxdp-{name}", daemon=True))
        if work is not None:
            threads.append(threading.Thread(target=work[0], name=f"pyxdp-{name}-work", daemon=True))
        try:
            if server is not None:
                try:  # state that cannot be read (no privilege, unsafe, another layout) ends it now: exit 1
                    collector.read()
                except NotLoaded:
                    pass  # served as pyxdp_up 0 until there is state
                collector.exposition()  # says whether there is state; imports what scrapes use
                shown = f"[{host}]" if ":" in host else host
                log(f"serving {pin_dir} on http://{shown}:{server.server_port}/metrics")
            for t in threads:
                t.start()
            signal.sigwait(stop)
        finally:
            if work is not None:
                work[1]()
            for t in reversed(threads):
                if t.is_alive():
                    if server is not None and t is threads[0]:
                        server.shutdown()
                    t.join(30)
            if server is not None:
                server.server_close()
            for sig in stop:  # a second Ctrl-C or SIGTERM while stopping changes nothing
                signal.signal(sig, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return 0


class _ListenError(PyxdpError):
    """The address cannot be listened on (in use, not local): exit 1."""
