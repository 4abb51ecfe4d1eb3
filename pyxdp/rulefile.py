"""The rule-set file: the whole firewall as TOML (what ``save`` writes and
``apply`` reads): the policy, the rules in order, and every set with its
elements and their remaining timeouts. Pure Python: no root, no libbpf.

    policy = "drop"
    rules = [
        "deny from @banned",
        "allow proto tcp to any port 22",
    ]

    [sets]
    banned = [
        "203.0.113.7/32",
        "198.51.100.0/24 ttl 583",     # removed by itself 583 s after the apply
    ]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from .errors import UsageError
from .layout import Verdict
from .prefix import Prefix, parse_prefix, parse_ttl, quote
from .rules import SET_NAME_RE, Rule, parse_rule


class Element(NamedTuple):
    """A set element: a prefix and its time to live in seconds (None: permanent)."""

    prefix: Prefix
    ttl: int | None = None

    def __str__(self) -> str:
        return f"{self.prefix}" + (f" ttl {self.ttl}" if self.ttl else "")


class RuleSetSpec(NamedTuple):
    """The whole firewall: what ``apply`` installs and ``save`` writes."""

    rules: tuple[Rule, ...] = ()
    sets: dict[str, list[Element]] = {}  # noqa: RUF012 - a NamedTuple default, never mutated
    policy: Verdict | None = None


def parse_element(text: str) -> Element:
    """``PREFIX`` or ``PREFIX ttl T``."""
    words = text.split()
    if len(words) == 1:
        return Element(parse_prefix(words[0]))
    if len(words) == 3 and words[1] == "ttl":
        ttl = parse_ttl(words[2])
        return Element(parse_prefix(words[0]), ttl or None)
    raise UsageError(f"bad set element {quote(text)}: 'PREFIX' or 'PREFIX ttl SECONDS'")


def _toml_loads(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def _line_of(lines: list[str], needle: str) -> int:
    """1-based number of the first line quoting ``needle``."""
    for i, line in enumerate(lines):
        if f'"{needle}"' in line or f"'{needle}'" in line:
            return i + 1
    return 0


def parse_ruleset(text: str, source: str = "input") -> RuleSetSpec:
    """The firewall a rule-set file describes. Errors name the line."""
    lines = text.splitlines()
    try:
        doc = _toml_loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError says "(at line N, column M)"
        raise UsageError(f"{source}: {str(exc)[:200]}") from None

    def fail(msg: str, needle: str | None = None, key: str | None = None) -> UsageError:
        line = _line_of(lines, needle) if needle is not None else 0
        if not line and key is not None:
            line = next((i + 1 for i, ln in enumerate(lines) if ln.lstrip().startswith(key)), 0)
        return UsageError(f"{source}" + (f" line {line}" if line else "") + f": {msg}")

    unknown = sorted(set(doc) - {"policy", "rules", "sets"})
    if unknown:
        raise fail(f"unknown key {quote(unknown[0])} (expected policy, rules, sets)", key=unknown[0])
    policy = doc.get("policy")
    if policy is not None and policy not in ("pass", "drop"):
        raise fail(f"policy must be \"pass\" or \"drop\", not {quote(str(policy))}", key="policy")
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list) or not all(isinstance(r, str) for r in raw_rules):
        raise fail("rules must be a list of strings, one rule each", key="rules")
    rules = []
    for text_rule in raw_rules:
        try:
            rules.append(parse_rule(text_rule))
        except UsageError as exc:
            raise fail(f"{exc} (in rule {quote(text_rule)})", needle=text_rule) from None
    seen: set[Rule] = set()
    for r in rules:
        if r in seen:
            raise fail(f"rule given twice: {r}", needle=str(r))
        seen.add(r)
    raw_sets = doc.get("sets", {})
    if not isinstance(raw_sets, dict):
        raise fail("sets must be a table of NAME = [elements]", key="sets")
    sets: dict[str, list[Element]] = {}
    for name, members in raw_sets.items():
        if not SET_NAME_RE.match(name):  # a bare name here: no '@'
            raise fail(f"bad set name {quote(name)}: 1 to 31 letters, digits, '_' or '-'", key=name)
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise fail(f"set {name} must be a list of strings ('PREFIX' or 'PREFIX ttl SECONDS')", key=name)
        out: dict[Prefix, Element] = {}
        for m in members:
            try:
                el = parse_element(m)
            except UsageError as exc:
                raise fail(f"set {name}: {exc}", needle=m) from None
            out[el.prefix] = el
        sets[name] = list(out.values())
    used = {s for r in rules for s in r.sets()}
    missing = sorted(used - set(sets))
    if missing:
        raise fail(f"a rule uses @{missing[0]}, which the file does not define under [sets]", key="rules")
    return RuleSetSpec(tuple(rules), sets, Verdict[policy.upper()] if policy else None)


def format_ruleset(spec: RuleSetSpec) -> str:
    """The rule-set file for ``save`` (``apply`` reads it back unchanged)."""
    out = ["# pyxdp firewall: 'pyxdp-load apply FILE' installs it, 'pyxdp-load save' writes it", ""]
    if spec.policy is not None:
        out.append(f'policy = "{spec.policy.label}"')
    out.append("rules = [")
    out += [f'    "{r}",' for r in spec.rules]
    out += ["]", "", "[sets]"]
    for name, members in spec.sets.items():
        out.append(f"{name} = [")
        out += [f'    "{e}",' for e in sort_elements(members)]
        out.append("]")
    return "\n".join(out) + "\n"


def sort_elements(elements: Sequence[Element]) -> list[Element]:
    return sorted(elements, key=lambda e: (e.prefix.family, e.prefix.addr, e.prefix.plen))
