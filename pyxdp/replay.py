"""Replay: packets through BPF_PROG_TEST_RUN on a private instance of the
filter program that reads a state's rules, sets and policy."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

from . import layout as L
from .kernel.bpf import RingBuffer
from .layout import Reason, Verdict
from .observe import Event
from .store.flows import Flow, live_flows
from .store.guard import GUARD_MAP
from .store.objects import FLOW_MAPS, filter_program, open_object

XDP_SHORT = -1  # replay: frame shorter than Ethernet, the kernel refuses to run it


class ReplayResult(NamedTuple):
    number: int
    length: int
    verdict: Verdict
    reason: Reason
    event: Event | None
    retval: int

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"packet": self.number, "len": self.length}
        if self.event:
            d.update(self.event.to_dict())
            for k in ("ts_ns", "ifindex", "interface", "len"):
                d.pop(k, None)
        d["verdict"] = self.verdict.label
        d["reason"] = self.reason.label
        return d


class Tester:
    """A private instance of the filter program for BPF_PROG_TEST_RUN: it
    reads this state's rules and policy, but has its own counters, trace
    ring and connection table, traces every packet (so each result has its
    reason) and leaves the live hit counters alone. :meth:`run` is a packet
    arriving; :meth:`send` a packet the host sends (the egress program
    records the flows it opens in the tester's table). Needs no interface
    attached. Close it (or use ``with``): it holds loaded programs and a 1 MiB
    ring. ``shape``: the program's ``knobs.shape`` (:class:`layout.Shape`;
    0: the general program)."""

    def __init__(self, pin_dir: str, shape: int = 0) -> None:
        self._obj: Any = None
        self.program: Any = None
        self.egress: Any = None
        self._ring: Any = None
        self._rb: RingBuffer | None = None
        obj = self._obj = open_object(pin_dir, trace_all=True, count_hits=False, shape=shape)
        try:
            obj.private_map("stats")
            obj.private_map("events")
            for name in (*FLOW_MAPS, GUARD_MAP):  # its own guard: never armed, every reply looked up
                obj.private_map(name)
            obj.only_program(filter_program(shape), "egress")
            obj.load()
            self.program = obj.program(filter_program(shape))
            self.egress = obj.program("egress")
            self._got: list[bytes] = []
            self._ring = obj.map("events")
            self._rb = RingBuffer(self._ring, self._got.append)
        except BaseException:
            self.close()
            raise

    def run(self, pkt: bytes, index: int = 0) -> ReplayResult:
        if len(pkt) < 14:  # the kernel refuses to run XDP on less than an Ethernet header
            return ReplayResult(index, len(pkt), Verdict.DROP, Reason.MALFORMED, None, XDP_SHORT)
        assert self._rb is not None, "tester is closed"
        res = self.program.test_run(pkt)
        self._got.clear()
        self._rb.poll(0, limit=64)
        ev = Event.decode(self._got[-1]) if self._got else None
        verdict = Verdict.DROP if res.retval == L.XDP_DROP else Verdict.PASS
        reason = ev.reason if ev else Reason.POLICY
        return ReplayResult(index, len(pkt), verdict, reason, ev, res.retval)

    def send(self, pkt: bytes) -> None:
        """``pkt`` leaves the host: the egress program sees it (and records
        the flow it opens). Frames shorter than Ethernet are not run."""
        assert self.egress is not None, "tester is closed"
        if len(pkt) >= 14:
            self.egress.test_run(pkt)

    def flows(self) -> list[Flow]:
        """The tester's tracked connections (what :meth:`send` recorded)."""
        from .store.clock import monotonic_ns

        assert self._obj is not None, "tester is closed"
        return sorted(live_flows((self._obj.map(name) for name in FLOW_MAPS), monotonic_ns()))

    def forget_flows(self) -> int:
        """Empty the tester's connection table; returns how many it held."""
        assert self._obj is not None, "tester is closed"
        gone = 0
        for name in FLOW_MAPS:
            m = self._obj.map(name)
            for k in list(m.keys()):
                m.delete(k)
                gone += 1
        return gone

    def close(self) -> None:
        rb, self._rb = self._rb, None
        if rb is not None:
            rb.close()
        for attr in ("_ring", "program", "egress", "_obj"):
            h = getattr(self, attr, None)
            setattr(self, attr, None)
            if h is not None:
                h.close()

    def __enter__(self) -> Tester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_obj", None) is not None:
            warnings.warn("unclosed pyxdp Tester (use 'with flt.tester() as t')", ResourceWarning, stacklevel=2)
            self.close()
