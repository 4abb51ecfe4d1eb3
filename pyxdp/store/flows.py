"""Connection state: the flows the host opened (written by the datapath's
egress program), their timeouts, and reading the table for ``flows``.

A flow is keyed as its replies arrive: remote end (their source) and local
end (their destination). Timeouts follow netfilter conntrack's defaults."""

from __future__ import annotations

from socket import AF_INET, AF_INET6, inet_ntop
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import layout as L
from ..errors import UsageError
from ..layout import FlowState

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ..kernel.bpf import Map
    from .state import State

# user-facing timeout name -> the flow state it applies to; seconds by default (conntrack's)
TIMEOUTS: dict[str, tuple[FlowState, int]] = {
    "tcp_syn_sent": (FlowState.SYN_SENT, 120),
    "tcp_established": (FlowState.ESTABLISHED, 432000),
    "tcp_fin": (FlowState.FIN, 120),
    "tcp_close": (FlowState.CLOSE, 10),
    "udp": (FlowState.UDP, 30),
    "udp_stream": (FlowState.UDP_STREAM, 120),
    "icmp": (FlowState.ICMP, 30),
}
FLOW_MAPS = ("flows4", "flows6")  # the flow tables, by family
MAX_TIMEOUT = 30 * 86400  # a month: longer is a mistake, and ns stay far from overflowing


def default_timeouts() -> tuple[int, ...]:
    """Seconds per enum flow_state (index 0 unused)."""
    out = [0] * L.FS_MAX
    for state, secs in TIMEOUTS.values():
        out[state] = secs
    return tuple(out)


def timeouts_by_name(timeouts: tuple[int, ...]) -> dict[str, int]:
    return {name: timeouts[state] for name, (state, _d) in TIMEOUTS.items()}


def with_timeouts(timeouts: tuple[int, ...], changes: Mapping[str, object]) -> tuple[int, ...]:
    """``timeouts`` with the named ones changed; names and values checked."""
    out = list(timeouts)
    for name, value in changes.items():
        if name not in TIMEOUTS:
            raise UsageError(f"unknown timeout {name!r}: {', '.join(TIMEOUTS)}")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TIMEOUT:
            raise UsageError(f"timeout {name} must be whole seconds from 1 to {MAX_TIMEOUT}, not {value!r}")
        out[TIMEOUTS[name][0]] = value
    return tuple(out)


def parse_timeout_args(items: Iterable[str]) -> dict[str, int]:
    """``NAME=SECONDS`` words (the CLI's ``--timeout``) as a dict; SECONDS
    may carry a unit (s, m, h, d)."""
    from ..model.prefix import parse_ttl

    out: dict[str, int] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"bad timeout {item[:80]!r}: NAME=SECONDS, e.g. udp=60")
        try:
            secs = parse_ttl(value)
        except UsageError:
            raise UsageError(f"bad timeout {item[:80]!r}: NAME=SECONDS, or with s, m, h or d (udp=1m)") from None
        if not secs:
            raise UsageError(f"timeout {name} must be at least 1 second")
        out[name.strip().replace("-", "_")] = secs
    return out


class Flow(NamedTuple):
    """A tracked connection, as ``flows`` lists it."""

    proto: str  # tcp, udp, icmp, icmpv6
    local: str  # address, with :port ([addr]:port for IPv6); ICMP: the echo id after '#'
    remote: str
    state: FlowState
    expires_in: float  # seconds

    def to_dict(self) -> dict[str, Any]:
        return {"proto": self.proto, "local": self.local, "remote": self.remote, "state": self.state.label,
                "expires_in": round(self.expires_in, 1)}


_PROTO = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}


def _end(family: int, addr: bytes, port: int, proto: int, local: bool) -> str:
    text = inet_ntop(AF_INET, addr[:4]) if family == 4 else inet_ntop(AF_INET6, addr)
    if proto in (1, 58):
        return f"{text} id {port}" if local else text
    return f"{text}:{port}" if family == 4 else f"[{text}]:{port}"


def decode(key: bytes, value: bytes, now_ns: int) -> Flow | None:
    """The flow of one ``flows4`` or ``flows6`` entry (told apart by the
    key's size), or None when it has expired."""
    fmt = L.FLOW_KEY4 if len(key) == L.FLOW_KEY4.size else L.FLOW_KEY
    family, proto, rport, lport, _pad, raddr, laddr = fmt.unpack(key)
    expires, state, _pad2 = L.FLOW.unpack(value)
    if expires <= now_ns or family not in (4, 6):
        return None
    try:
        st = FlowState(state)
    except ValueError:
        return None
    return Flow(_PROTO.get(proto, str(proto)), _end(family, laddr, lport, proto, True),
                _end(family, raddr, rport, proto, False), st, (expires - now_ns) / 1e9)


def flows_made(st: State) -> dict[int, int]:
    """Flows the egress program started since the state was made, per family (4, 6)."""
    m = st.map("flows_made")
    out = {}
    for idx, fam in ((0, 4), (1, 6)):
        raw = m.lookup(L.U32.pack(idx)) or b""
        out[fam] = sum(int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8))
    return out


def live_flows(maps: Iterable[Map], now_ns: int) -> list[Flow]:
    """The unexpired flows in ``maps`` (a state's or a tester's ``FLOW_MAPS``)."""
    return [f for m in maps for k, v in m.items() if (f := decode(k, v, now_ns)) is not None]


def read_flows(st: State) -> list[Flow]:
    """The live (unexpired) flows, by protocol and remote end."""
    import time

    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # the datapath's clock (read coarsely there)
    out = live_flows((st.map(name) for name in FLOW_MAPS), now)
    out.sort(key=lambda f: (f.proto, f.remote, f.local))
    return out
