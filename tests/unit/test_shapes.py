"""The shape a configuration needs (pyxdp.model.shapes), without root."""

from __future__ import annotations

from pyxdp.layout import RuleField as F
from pyxdp.layout import Shape
from pyxdp.model.compiler import compile_rules
from pyxdp.model.rules import parse_rule_words
from pyxdp.model.shapes import FAST, FORMS, NARROWEST, RULE_PARTS, covers, describe, joint, shape_for


def test_every_shape_bit_has_a_place() -> None:
    """Each SH_NO_* bit is decided by the config (state, trace, rules at all)
    or by the rule-set fields RULE_PARTS lists: a new bit must be placed
    there, or shape_for never clears it and the loader would leave the part
    out of every program."""
    placed = Shape.NO_STATE | Shape.NO_TRACE | Shape.NO_RULES
    for bit, _fields in RULE_PARTS + FORMS:
        assert not placed & bit, f"{bit!r} listed twice"
        placed |= bit
    assert placed == Shape(sum(Shape)) == NARROWEST | FAST and not NARROWEST & FAST


def test_shape_for() -> None:
    none = NARROWEST | Shape.PORT_RULES  # no rules: the program with the decision inlined
    assert shape_for(False, 0, 0, 0) == none
    assert shape_for(True, 0, 0, 0) == none & ~Shape.NO_STATE
    assert shape_for(False, 5, 0, 0) == none & ~Shape.NO_TRACE
    assert shape_for(False, 0, 0, ~0) == none  # no rules: no walk, whatever the tables hold
    assert shape_for(False, 0, 3, 0) == NARROWEST & ~Shape.NO_RULES
    assert shape_for(True, 1, 1, ~0 & ~(F.BAN_FIRST | F.PORT_RULES)) == Shape(0)  # the general program
    assert shape_for(True, 1, 1, ~0) == FAST  # every part, and both fast paths (the forms are there)
    ban = NARROWEST & ~(Shape.NO_RULES | Shape.NO_SETS) | Shape.BAN_FIRST
    assert shape_for(False, 0, 2, F.SSET | F.BAN_FIRST) == ban
    assert shape_for(False, 0, 1, F.DPORT) == NARROWEST & ~(Shape.NO_RULES | Shape.NO_PORTS)
    assert shape_for(False, 0, 1, F.LIT6_DST | F.SSET) == NARROWEST & ~(Shape.NO_RULES | Shape.NO_LIT6 | Shape.NO_SETS)


def test_shape_of_compiled_rules() -> None:
    """The fields the compiler reports for typical rules need the parts they use, and only those."""
    cases = {
        "deny from @banned": Shape.NO_SETS,
        "allow 22/tcp": Shape.NO_PORTS | Shape.NO_PROTO,
        "deny from 10.0.0.0/8": Shape.NO_LIT4,
        "deny to 2001:db8::/32": Shape.NO_LIT6,
        "allow in on eth0": Shape.NO_IFACE,
    }
    for text, parts in cases.items():
        t = compile_rules([parse_rule_words(text.split())], 64, 0, {"banned": 1}, {"eth0": [2]})
        got = shape_for(True, 0, 1, t.fields)
        assert got & ~FAST == NARROWEST & ~(Shape.NO_STATE | Shape.NO_RULES | parts), text
        assert bool(got & Shape.BAN_FIRST) == text.startswith("deny from @"), text
        assert bool(got & Shape.PORT_RULES) == (text in ("deny from @banned", "allow 22/tcp")), text


def test_covers_and_joint() -> None:
    a = shape_for(True, 0, 1, F.SPORT)
    b = shape_for(False, 0, 1, F.SSET)
    both = joint(a, b)
    assert covers(both, a) and covers(both, b) and not covers(a, b) and not covers(b, a)
    assert covers(Shape(0), a) and not covers(NARROWEST, a)
    assert both == a & b
    # fast paths never decide coverage (right on any rule set); a joint program keeps those both have
    fa, fb = a | Shape.BAN_FIRST, b | Shape.BAN_FIRST | Shape.PORT_RULES
    assert covers(fa, a) and covers(a, fa) and covers(joint(fa, fb), fb) and joint(fa, fb) & FAST == Shape.BAN_FIRST
    assert describe(0) == "general" and describe(Shape.NO_STATE | Shape.NO_TRACE) == "no state, no trace"
