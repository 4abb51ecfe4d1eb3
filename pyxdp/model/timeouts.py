"""Connection timeouts: their names, conntrack's defaults, and the checks
on new values (pure; the datapath reads them per flow state)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import layout as L
from ..errors import UsageError
from ..layout import FlowState
from .prefix import parse_ttl

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

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
