"""Datapath shapes (issue 18): every program shape the loader can produce
gives the reference model's verdicts; the loader loads the shape the
configuration needs, replaces it on every interface around a config switch
(widened before, narrowed after), loads nothing when the shape stays, and a
writer killed at any point leaves programs that cover the live configuration
(the next writer finishes the replacement)."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import packets as P
from helpers.env import RUN, NetPair, needs_root
from helpers.model import Firewall, MRule, decide, outbound

from pyxdp import Element, RuleSetSpec, Verdict
from pyxdp.layout import Shape
from pyxdp.model.prefix import parse_prefix
from pyxdp.model.rules import parse_rule_words
from pyxdp.model.shapes import FAST, RULE_PARTS, shape_for
from pyxdp.store.clock import monotonic_ns

pytestmark = needs_root

# one rule per part a rule set can need (RULE_PARTS' order), each using that part alone
PART_RULES = {
    Shape.NO_PROTO: "allow proto icmp",
    Shape.NO_SETS: "deny from @a",
    Shape.NO_PORTS: "allow 53",
    Shape.NO_IFACE: "deny on eth9",
    Shape.NO_LIT4: "allow from 10.1.2.0/24",
    Shape.NO_LIT6: "allow from 2001:db8:1::/64",
}
SET_A = [parse_prefix("10.1.0.0/16"), parse_prefix("2001:db8:1::/48")]
HOST4, HOST6 = "198.51.100.1", "2001:db8:ffff::1"


def _arriving() -> list[bytes]:
    """Packets that tell the parts apart: in and out of the prefixes and the
    set, each protocol, a port a rule names and one it does not, replies to
    the flows of _leaving and packets like them that are not replies."""
    out = [P.arp()]
    for src in ("10.1.2.3", "10.1.9.9", "10.9.9.9"):
        out += [P.udp4(src, 53), P.udp4(src, 80), P.tcp4(src, 53), P.tcp4(src, 22),
                P.eth(0x0800, P.ipv4(src, HOST4, P.ICMP, P.icmp(8)))]
        out += [P.udp4(src, 5000, sport=53), P.udp4(src, 5001, sport=53)]  # a reply (from 10.9.9.9), and not
    for src in ("2001:db8:1::5", "2001:db8:1:1::5", "2001:db8:9::9"):
        out += [P.udp6(src, 53), P.udp6(src, 80), P.tcp6(src, 53), P.tcp6(src, 22),
                P.eth(0x86DD, P.ipv6(src, HOST6, P.ICMPV6, P.icmp(128)))]
        out += [P.udp6(src, 5000, sport=53), P.udp6(src, 5001, sport=53)]
    return out


def _leaving() -> list[bytes]:
    return [P.udp4(HOST4, 53, dst="10.9.9.9", sport=5000), P.udp6(HOST6, 53, dst="2001:db8:9::9", sport=5000)]


def _rules_for(parts: tuple[Shape, ...] | None) -> list[str]:
    """A rule list using exactly ``parts`` (None: no rules; (): rules that use none)."""
    if parts is None:
        return []
    return [PART_RULES[p] for p in parts] or ["deny"]


@pytest.fixture(scope="module")
def filt() -> Iterator[Any]:
    from pyxdp import Filter

    path = f"/sys/fs/bpf/pyxdp-t{RUN}-shapes"
    try:
        with Filter.open(path, create=True, capacity=1024, rules=64, flows=1024) as flt:  # small: quick testers
            yield flt
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_every_shape_matches_the_model(filt: Any) -> None:
    """Every shape the loader can produce (connection state and trace
    sampling each kept or left out, no rules, or rules using any subset of
    the rule parts: 2 x 2 x 65 = 260) is loaded with a configuration of
    exactly that shape and gives the model's verdict, reason and rule for
    each packet, replies to flows the host opened among them."""
    from pyxdp.replay import Tester
    from pyxdp.store.shapes import needed

    bits = [b for b, _f in RULE_PARTS]
    subsets: list[tuple[Shape, ...] | None] = [None]
    for k in range(len(bits) + 1):
        subsets += list(itertools.combinations(bits, k))
    seen: set[Shape] = set()
    problems: list[str] = []
    for parts in subsets:
        texts = _rules_for(parts)
        rules = tuple(parse_rule_words(t.split()) for t in texts)
        filt.apply(RuleSetSpec(rules, {"a": [Element(p, None) for p in SET_A]}, Verdict.DROP, established=True))
        for on in (True, False):
            filt.set_established(on)  # one config write (no program here: nothing is replaced)
            cfg = filt.config()
            for every in (0, 1):
                shape = needed(filt.state, cfg._replace(trace_every=every))
                fields = 0 if parts is None else sum(f for b, f in RULE_PARTS if b in parts)
                if shape & ~FAST != shape_for(on, every, len(rules), fields) & ~FAST:  # fast paths: by the form
                    problems.append(f"{texts} state {on} trace {every}: needs {shape!r}, compiled fields say "
                                    f"{shape_for(on, every, len(rules), fields)!r}")
                seen.add(shape)
                fw = Firewall([MRule.from_rule(r) for r in rules], {"a": dict.fromkeys(SET_A)}, Verdict.DROP,
                              established=on)
                with Tester(filt.pin_dir, shape=shape) as tester:
                    for pkt in _leaving():
                        tester.send(pkt)
                        outbound(pkt, fw, monotonic_ns())
                    for pkt in _arriving():
                        r = tester.run(pkt)
                        got = (r.verdict, r.reason, r.event.rule if r.event else 0)
                        want = tuple(decide(pkt, fw, monotonic_ns()))
                        if got != want:
                            problems.append(f"shape {shape!r} ({texts}, state {on}): {pkt.hex()}: {got} != {want}")
        assert not problems, "\n".join(problems[:20])
    assert len({s & ~FAST for s in seen}) == 260  # and the fast paths where the rule lists have their forms
    assert {s & FAST for s in seen} == {Shape(0), Shape.PORT_RULES, Shape.BAN_FIRST, FAST}


# ---- the loader on interfaces: replacement around a switch, none when the shape stays -------------


def _kernel_progs(pair: NetPair) -> list[int]:
    """The XDP program each of the pair's two interfaces runs (the same state is attached to both)."""
    from pyxdp.kernel.rtnl import Links

    out = []
    for ns, dev in ((pair.b, pair.vb), (pair.a, pair.va)):
        with Links(ns) as nl:
            out.append(int(nl.state(dev).prog_id))
    return out


def _shape_of(prog_id: int) -> Shape:
    from pyxdp.kernel.bpf import Program
    from pyxdp.store.shapes import program_shape

    with Program.from_id(prog_id) as p:
        return program_shape(p)


def _pinned_id(pin: str) -> int:
    from pyxdp.kernel.bpf import Program

    with Program.from_pin(os.path.join(pin, "prog")) as p:
        return int(p.id)


def _need(pin: str) -> Shape:
    from pyxdp import Filter
    from pyxdp.store.shapes import needed

    with Filter.open(pin, lock=False) as flt:
        return needed(flt.state, flt.config())


def _records(pin: str) -> list[tuple[int, int]]:
    """(prog_id, flags) of each interface record."""
    from pyxdp import Filter
    from pyxdp import layout as L

    with Filter.open(pin, lock=False) as flt:
        return sorted((L.IFACE_VAL.unpack(v)[2], L.IFACE_VAL.unpack(v)[4]) for _k, v in flt.state.map("ifaces").items())


def _settled(pin: str, pair: NetPair) -> list[str]:
    """Problems unless both interfaces run the pinned program, recorded as such, of the shape the live config needs."""
    from pyxdp import layout as L

    pid = _pinned_id(pin)
    progs = _kernel_progs(pair)
    out = []
    if progs != [pid, pid]:
        out.append(f"the interfaces run {progs}, the pinned program is {pid}")
    if [r for r in _records(pin) if r != (pid, r[1]) or r[1] & L.IFF_CHANGING]:
        out.append(f"records {_records(pin)} (pinned {pid})")
    if _shape_of(pid) != _need(pin):
        out.append(f"the pinned program's shape {_shape_of(pid)!r}, the config needs {_need(pin)!r}")
    return out


def _covered(pin: str, pair: NetPair) -> list[str]:
    """Problems unless every program the interfaces run is ours and covers the live configuration."""
    from pyxdp import Filter
    from pyxdp.model.shapes import covers
    from pyxdp.store.shapes import uses_state

    need = _need(pin)
    out = []
    with Filter.open(pin, lock=False) as flt:
        for pid in _kernel_progs(pair):
            if not pid or not uses_state(flt.state, pid):
                out.append(f"an interface runs {pid}, not a program of this state")
            elif not covers(_shape_of(pid), need):
                out.append(f"program {pid} ({_shape_of(pid)!r}) leaves out a part the live config uses ({need!r})")
    return out


@pytest.fixture
def attached(pin_dir: str, netpair: NetPair) -> Iterator[tuple[str, NetPair]]:
    """One state attached to both interfaces of the pair."""
    from pyxdp import Filter

    with Filter.open(pin_dir, create=True, with_program=True) as flt:
        flt.attach(netpair.vb, netns=netpair.b)
        flt.attach(netpair.va, netns=netpair.a)
    yield pin_dir, netpair
    with Filter.open(pin_dir) as flt:
        for dev, ns in ((netpair.vb, netpair.b), (netpair.va, netpair.a)):
            flt.detach(dev, netns=ns)


def test_shape_follows_the_config(attached: tuple[str, NetPair]) -> None:
    """attach loads the shape the config needs; an edit that keeps the shape
    loads nothing (the program ids stay); one that changes it runs a new
    program of the new shape on both interfaces."""
    from pyxdp import Filter

    pin, pair = attached
    assert not _settled(pin, pair)
    first = _kernel_progs(pair)
    assert _shape_of(first[0]) == shape_for(True, 0, 0, 0)
    with Filter.open(pin) as flt:
        flt.allow("22/tcp")
        widened = _kernel_progs(pair)
        assert widened[0] != first[0] and not _settled(pin, pair)
        seen = flt.shape()
        assert (seen.running, seen.needed, seen.settled) == (_shape_of(widened[0]), _need(pin), True)
        flt.allow("80/tcp")  # the same parts: no load
        flt.set_add("a", [parse_prefix("10.1.0.0/16")])  # set edits never change the shape
        flt.set_policy(Verdict.DROP)
        assert _kernel_progs(pair) == widened and _pinned_id(pin) == widened[0]
        flt.set_established(False)
        narrowed = _kernel_progs(pair)
        assert narrowed[0] != widened[0] and _shape_of(narrowed[0]) & Shape.NO_STATE and not _settled(pin, pair)
        flt.set_established(True)
        flt.delete_rules([1, 2])
        assert _shape_of(_kernel_progs(pair)[0]) == shape_for(True, 0, 0, 0) and not _settled(pin, pair)


BEFORE = 'policy = "drop"\nestablished = "off"\nrules = ["allow 22/tcp"]\n'
AFTER = ('policy = "drop"\nestablished = "on"\nrules = ["deny from 10.0.0.0/8", "allow from @a"]\n'
         '[sets]\na = ["10.1.0.0/16"]\n')


def _forked_apply(pin: str, text: str, kill: int) -> tuple[int, list[str]]:
    """``apply`` of ``text`` in a forked child that SIGKILLs itself after its
    ``kill``th change (pyxdp.kernel.bpf.Map's crash hook; a fork, not a new
    interpreter: the loop stays short). Returns its exit status (a negative
    signal number) and, per replacement and switch, the change count at its
    start and end."""
    from pyxdp import Filter
    from pyxdp.kernel.bpf import Map
    from pyxdp.model.rulefile import parse_ruleset
    from pyxdp.store import shapes, state

    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(rd)

            def mark(name: str, fn: Any) -> Any:
                def wrapped(*a: Any, **k: Any) -> Any:
                    os.write(wr, f"{name} start {Map._writes}\n".encode())
                    r = fn(*a, **k)
                    os.write(wr, f"{name} end {Map._writes}\n".encode())
                    return r
                return wrapped

            shapes.replace = mark("replace", shapes.replace)  # type: ignore[method-assign]
            state.State._switch_config = mark("switch", state.State._switch_config)  # type: ignore[method-assign]
            Map._kill_after, Map._writes = kill, 0
            with Filter.open(pin) as flt:
                flt.apply(parse_ruleset(text))
            os._exit(0)
        except BaseException:
            os._exit(3)
    os.close(wr)
    out = b""
    while chunk := os.read(rd, 4096):
        out += chunk
    os.close(rd)
    status = os.waitpid(pid, 0)[1]
    return (-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)), out.decode().splitlines()


def test_killed_in_a_shape_change(attached: tuple[str, NetPair]) -> None:
    """apply of a rule set that needs parts the running program leaves out
    (connection state, sets, IPv4 prefixes) and no longer the ones it used
    (ports, protocol): widened on both interfaces, switched, narrowed. Killed
    at every change inside the replacements and around the switch: both
    interfaces run programs of this state that cover the live config; the
    next writer (a change that keeps the shape) finishes the replacement."""
    from pyxdp import Filter
    from pyxdp.model.rulefile import parse_ruleset

    pin, pair = attached

    def restore() -> None:
        with Filter.open(pin) as flt:
            flt.apply(parse_ruleset(BEFORE))

    restore()
    code, lines = _forked_apply(pin, AFTER, 10**9)  # counts the changes, kills nowhere
    assert code == 0, lines
    assert [ln.split()[0] for ln in lines if " start " in ln] == ["replace", "switch", "replace"], lines
    points: set[int] = set()
    starts = [int(ln.split()[2]) for ln in lines if " start " in ln]
    ends = [int(ln.split()[2]) for ln in lines if " end " in ln]
    for a, b in zip(starts, ends):
        points.update(range(a + 1, b + 2))
    assert not _settled(pin, pair)
    restore()
    problems: list[str] = []
    for n in sorted(points):
        code, _lines = _forked_apply(pin, AFTER, n)
        tag = f"killed after change {n}"
        if code not in (0, -9):
            problems.append(f"{tag}: exit {code}")
        problems += [f"{tag}: {p}" for p in _covered(pin, pair)]
        with Filter.open(pin) as flt:  # the next writer
            flt.set_policy(flt.policy)
        problems += [f"{tag}, then a writer: {p}" for p in _covered(pin, pair) + _settled(pin, pair)]
        with Filter.open(pin, lock=False) as flt:
            switched = flt.established  # killed after the switch (BEFORE has connection state off)
        if switched:
            restore()
    assert not problems, "\n".join(problems)
