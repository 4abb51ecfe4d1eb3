"""The datapath's fast paths (issue 18): forms of a rule list that a program
loaded with the matching ``knobs.shape`` bits decides without the general
rule walk. The compiler marks each generation's rule set with the forms it
has (``RuleField.BAN_FIRST``, ``RuleField.PORT_RULES`` in ``ruleset.fields``),
and a program takes a fast path only while the live rule set has that form,
so a program with fast-path bits is right on any rule set: the loader may
replace it before or after the switch to the rules it was chosen for.

- ``BAN_FIRST``: rule 1 is ``deny from @SET`` and nothing else (every ban
  list): the set is probed once, inlined, before the rule walk; a hit is
  rule 1, a miss is never probed again.
- ``PORT_RULES``: every rule (after that one, when the list starts with it)
  constrains at most the protocol and the destination port: the port's
  class (one array lookup by port) and the protocol's give the two vectors
  to AND, inlined. An empty list gets this bit too (see :func:`fast_paths`).

A program with either bit is ``xdp_filter_fast``: the whole decision inlined
in the entry point (no call into ``finish``), verified once per parser path
(longer to load: see BENCHMARKS.md).

Pure Python: no root, no libbpf."""

from __future__ import annotations

from collections.abc import Sequence

from ..layout import Action, RuleField, Shape
from .rules import ANY, Rule


def is_ban(rule: Rule) -> bool:
    """``deny from @SET``: a source set and no other constraint."""
    return (rule.action == Action.DENY and rule.src.set is not None and rule.proto == "any" and
            rule.sport is None and rule.dst == ANY and rule.dport is None and rule.iface is None)


# the protocols the fast path's protocol step reads (the datapath's five protocol classes)
BASE_PROTOS = ("any", "tcp", "udp", "icmp", "icmpv6")


def is_port_only(rule: Rule) -> bool:
    """A rule that constrains at most the protocol (one of :data:`BASE_PROTOS`)
    and the destination port."""
    return (rule.proto in BASE_PROTOS and rule.src == ANY and rule.sport is None and rule.dst == ANY and
            rule.iface is None)


def rule_forms(rules: Sequence[Rule]) -> int:
    """The fast-path forms of ``rules`` (the :class:`RuleField` bits the
    compiler adds to ``ruleset.fields``)."""
    forms = 0
    rest = rules
    if rules and is_ban(rules[0]):
        forms |= RuleField.BAN_FIRST
        rest = rules[1:]
    if rules and all(is_port_only(r) for r in rest):
        forms |= RuleField.PORT_RULES
    return forms


def fast_paths(rules: Sequence[Rule]) -> Shape:
    """The fast-path bits of ``knobs.shape`` worth loading for ``rules``: those
    whose form the list has (a program without them decides the same, through
    the general rule walk). ``PORT_RULES`` after a ban needs ``BAN_FIRST`` too.
    An empty list gets ``PORT_RULES`` as well (no rule step is made at all;
    the bit gives it the program without the call into ``finish``)."""
    forms = rule_forms(rules)
    shape = Shape(0) if rules else Shape.PORT_RULES
    if forms & RuleField.BAN_FIRST:
        shape |= Shape.BAN_FIRST
    if forms & RuleField.PORT_RULES:
        shape |= Shape.PORT_RULES
    return shape
