"""Connection state: the flows the host opened (written by the datapath's
egress program) and reading the table for ``flows``.

A flow is keyed as its replies arrive: remote end (their source) and local
end (their destination). Timeouts follow netfilter conntrack's defaults."""

from __future__ import annotations

from socket import AF_INET, AF_INET6, inet_ntop
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import layout as L
from ..layout import FlowState
from .objects import FLOW_MAPS

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..kernel.bpf import Map
    from .state import State

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
    expires, state, _syn_ack = L.FLOW.unpack(value)
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
