"""The datapath's clock and the grace periods: when a writer may reuse what
packets read a moment ago."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from .. import layout as L
from ..errors import BpfError

if TYPE_CHECKING:
    from typing import Protocol

    from ..kernel.bpf import Map

    class _HasMaps(Protocol):  # a State (not imported: state imports this module)
        def map(self, name: str) -> Map: ...

RECENT_SWITCH_NS = 5_000_000_000  # a slot live less than this ago waits for an RCU grace period


def monotonic_ns() -> int:
    """The datapath's clock for expiry (it reads CLOCK_MONOTONIC coarsely)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


_MEMBARRIER = {"x86_64": 324, "aarch64": 283}  # syscall numbers
MEMBARRIER_CMD_GLOBAL = 1


def grace_period(st: _HasMaps) -> None:
    """Wait until no BPF program (a packet's run, a test run, a sweeper walk)
    can still be reading data written before now. Writing into the state's
    map-in-map ``rcu_sync`` returns only after the kernel's synchronize_rcu()
    (it must know no program still uses the old inner map); XDP programs,
    test runs and BPF timer callbacks all run inside RCU read-side sections.
    Where that fails, membarrier(MEMBARRIER_CMD_GLOBAL) (synchronize_rcu when
    more than one CPU is online), else a wait far longer than any run."""
    try:
        token = st.map("rcu_token")
        st.map("rcu_sync").update(L.U32.pack(0), L.U32.pack(token.fd))
        return
    except (BpfError, KeyError):
        pass
    import ctypes
    import platform

    nr = _MEMBARRIER.get(platform.machine())
    if nr is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(nr, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0 and (os.cpu_count() or 1) > 1:
            return
    time.sleep(0.05)
