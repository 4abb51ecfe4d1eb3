"""The datapath's shapes (pure): which parts of the XDP program a
configuration can use, so the loader loads a program that leaves the others
out (``knobs.shape``, :class:`pyxdp.layout.Shape`: a bit set is a part left
out; 0 is the general program).

A program *covers* a configuration when it leaves out nothing the
configuration uses. The control plane keeps every running program covering
the live configuration (see :mod:`pyxdp.store.shapes`)."""

from __future__ import annotations

from ..layout import RuleField as F
from ..layout import Shape

# The one list of which rule-set feature needs which part: a rule set whose
# ``ruleset.fields`` (the compiler's Tables.fields) has any of these bits
# needs the part (its SH_NO_* bit clear). A new part the rule set decides
# slots in here.
RULE_PARTS: tuple[tuple[Shape, int], ...] = (
    (Shape.NO_PROTO, F.PROTO | F.PROTO_NUM),
    (Shape.NO_SETS, F.SSET | F.DSET),
    (Shape.NO_PORTS, F.SPORT | F.DPORT),
    (Shape.NO_IFACE, F.IFACE),
    (Shape.NO_LIT4, F.LIT4_SRC | F.LIT4_DST),
    (Shape.NO_LIT6, F.LIT6_SRC | F.LIT6_DST),
)
RULE_BITS = Shape.NO_RULES
for _bit, _fields in RULE_PARTS:
    RULE_BITS |= _bit
NARROWEST = RULE_BITS | Shape.NO_STATE | Shape.NO_TRACE  # no rules, no state, no tracing
# The fast paths (pyxdp.model.fastpath): bits a program has, not parts it leaves out. A program with
# them takes a fast path only while the live rule set has its form (RuleField.BAN_FIRST, PORT_RULES),
# so it is right on any rule set: they never decide whether a program covers a configuration.
FAST = Shape.BAN_FIRST | Shape.PORT_RULES
FORMS: tuple[tuple[Shape, int], ...] = ((Shape.BAN_FIRST, F.BAN_FIRST), (Shape.PORT_RULES, F.PORT_RULES))


def shape_for(established: bool, trace_every: int, nrules: int, fields: int) -> Shape:
    """The narrowest shape that covers a configuration: connection state
    on/off, trace sampling, the number of rules and the fields they use."""
    out = NARROWEST
    if established:
        out &= ~Shape.NO_STATE
    if trace_every:
        out &= ~Shape.NO_TRACE
    if nrules:  # no rules: no walk, whatever the idle tables hold
        out &= ~Shape.NO_RULES
        for bit, need in RULE_PARTS:
            if fields & need:
                out &= ~bit
        for bit, form in FORMS:
            if fields & form:
                out |= bit
    else:  # no rules: the program with the decision inlined (no call into the rule step)
        out |= Shape.PORT_RULES
    return Shape(out)


def covers(program: int, need: int) -> bool:
    """Whether a program of shape ``program`` keeps every part a
    configuration of shape ``need`` uses."""
    return not program & ~FAST & ~need


def joint(*shapes: int) -> Shape:
    """The narrowest shape that covers each of ``shapes`` (a program that
    runs while one configuration is switched to another)."""
    out = NARROWEST | FAST  # fast paths: those every configuration has the form of
    for s in shapes:
        out &= s
    return Shape(out)


def describe(shape: int) -> str:
    """A program of ``shape`` for people: what it leaves out and its fast
    paths, e.g. ``no state, no trace; fast paths: ban first``, or
    ``general``."""
    out = [b.name.lower().replace("_", " ") for b in Shape if shape & b & ~FAST and b.name]
    fast = [b.name.lower().replace("_", " ") for b in Shape if shape & b & FAST and b.name]
    text = ", ".join(out) if out else "general"
    return text + (f"; fast paths: {', '.join(fast)}" if fast else "")
