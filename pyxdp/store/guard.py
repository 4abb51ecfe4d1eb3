"""The reply guard (``ctguard``, bpf/lib/conntrack.h): per local port (TCP,
UDP) or echo identifier (ICMP), the time until which a flow using it may
live, so that a packet to a port no live flow uses skips the flow lookup.
The egress program keeps it; the control plane arms it (once it covers every
flow in the tables) and covers flows written without it (a migration from a
layout that had no guard)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .. import layout as L
from .mapio import write_all

if TYPE_CHECKING:
    from ..kernel.bpf import Map

GUARD_MAP = "ctguard"
GUARD_MARGIN_NS = 60 * 10**9  # beyond the longest timeout: later than any expiry egress writes meanwhile


def guard_slot(proto: int, lport: int) -> int:
    """The reply guard's entry of a flow's local port (TCP, UDP) or echo id (ICMP)."""
    return (0 if proto == 6 else 1 if proto == 17 else 2) << 16 | lport


def arm_guard(guard: Map) -> None:
    """Let packets skip the flow lookup where the guard says no flow can be
    live (the sweeper keeps its clock from here on). Only once the guard
    covers every flow in the tables: a new state's (none yet), or after
    :func:`cover_flows` with the egress program that raises it running."""
    guard.update(L.U32.pack(L.CT_CLOCK), L.U64.pack(1))


def cover_flows(flow_maps: Iterable[Map], guard: Map, now_ns: int, longest_s: int) -> int:
    """Raise the reply guard over every live flow in ``flow_maps`` (flows an
    egress program that did not keep the guard recorded): their ports are
    guarded until ``longest_s`` (the longest flow timeout) and a minute from
    now, later than any expiry an egress program raising the guard meanwhile
    can write, so no raise it makes is lost. Returns the ports guarded."""
    slots = set()
    for m in flow_maps:
        for key, value in m.items():
            fmt = L.FLOW_KEY4 if len(key) == L.FLOW_KEY4.size else L.FLOW_KEY
            _family, proto, _rport, lport, *_ = fmt.unpack(key)
            if L.FLOW.unpack(value)[0] > now_ns:
                slots.add(guard_slot(proto, lport))
    until = L.U64.pack(now_ns + longest_s * 10**9 + GUARD_MARGIN_NS)
    keys = [L.U32.pack(s) for s in sorted(slots)]
    write_all(guard, keys, [until] * len(keys))
    return len(keys)
