"""What changed at run time on top of the config file, kept across reboots.

``/etc/pyxdp/pyxdp.toml`` is the operator's and pyxdp never writes it. What
pyxdp itself must keep (set elements added at run time with their time left,
the ``deny from @SET`` rule a first ``ban`` inserted, and, when the config
says ``[runtime] keep_rules = true``, rules added by hand) is this module's
runtime file, in ``/var/lib/pyxdp/`` (``pyxdp-load save-runtime`` writes it;
``pyxdp-load up`` on fresh state merges it: the config first, the runtime on
top). Pure Python: no root, no libbpf.

    # comments say what wrote it
    [sets]
    banned = [
        "203.0.113.9/32 ttl 7190",
    ]

    [[rule]]
    rule = "deny from @banned"
    before = "allow proto tcp to any port 22"   # the config's rule it ran before; absent: after the last
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import UsageError
from .prefix import quote
from .rulefile import Element, RuleSetSpec, parse_element, sort_elements
from .rules import SET_NAME_RE, Rule, parse_rule


class KeptRule(NamedTuple):
    """A rule added at run time: ``before`` is the config's rule it ran just
    before (None: it ran after all of them)."""

    rule: Rule
    before: Rule | None = None


class RuntimeSpec(NamedTuple):
    """The runtime file: elements (per set) and rules that the config lacks."""

    sets: dict[str, list[Element]] = {}  # noqa: RUF012 - a NamedTuple default, never mutated
    rules: tuple[KeptRule, ...] = ()

    def summary(self) -> str:
        """``3 set elements (2 sets), 1 rule``."""
        n = sum(len(v) for v in self.sets.values())
        return (f"{n} set element{'' if n == 1 else 's'} ({len(self.sets)} set{'' if len(self.sets) == 1 else 's'}), "
                f"{len(self.rules)} rule{'' if len(self.rules) == 1 else 's'}")


def is_ban_rule(rule: Rule, config: RuleSetSpec) -> bool:
    """Whether ``rule`` is the ``deny from @SET`` that a first ``ban`` inserts
    as rule 1: ``deny from @SET`` for a set no rule of ``config`` uses."""
    sets = rule.sets()
    return (len(sets) == 1 and str(rule) == f"deny from @{sets[0]}"
            and not any(sets[0] in r.sets() for r in config.rules))


def extract(running: RuleSetSpec, base: RuleSetSpec, keep_rules: bool) -> RuntimeSpec:
    """What of the ``running`` firewall the config ``base`` (what the last
    ``up`` applied) does not have: the elements of each set that ``base``
    lacks (a set ``base`` lacks: all of it, even empty), and the rules
    ``base`` lacks that are kept (a ban's ``deny from @SET`` always; any other
    only with ``keep_rules``), each with the base rule it ran before."""
    sets: dict[str, list[Element]] = {}
    for name, elements in running.sets.items():
        have = {e.prefix for e in base.sets.get(name, ())}
        extra = [e for e in elements if e.prefix not in have]
        if extra or name not in base.sets:
            sets[name] = sort_elements(extra)
    in_base = set(base.rules)
    kept: list[KeptRule] = []
    for i, r in enumerate(running.rules):
        if r in in_base or not (keep_rules or is_ban_rule(r, base)):
            continue
        before = next((x for x in running.rules[i + 1:] if x in in_base), None)
        kept.append(KeptRule(r, before))
    return RuntimeSpec(sets, tuple(kept))


def merge(config: RuleSetSpec, runtime: RuntimeSpec) -> tuple[RuleSetSpec, list[str]]:
    """The config with the runtime on top, and a note for each runtime rule
    left out. Sets: the config's elements, then each runtime element the
    config's set lacks (a set the config lacks is added). Rules: the config's;
    each kept runtime rule goes before the config rule it ran before (a ban's
    rule, without that rule: first, as ``ban`` inserts it; another: last),
    when it is still kept (a ban's rule while no config rule uses its set;
    another while the config says ``keep_rules``) and its sets exist."""
    sets = {name: list(elements) for name, elements in config.sets.items()}
    for name, elements in runtime.sets.items():
        have = {e.prefix for e in sets.get(name, ())}
        sets.setdefault(name, []).extend(e for e in elements if e.prefix not in have)
    rules = list(config.rules)
    notes: list[str] = []
    for k in runtime.rules:
        ban = is_ban_rule(k.rule, config)
        if k.rule in rules or not (ban or config.keep_rules):
            continue
        missing = [s for s in k.rule.sets() if s not in sets]
        if missing:
            notes.append(f"runtime rule '{k.rule}' left out: set {missing[0]} is gone")
            continue
        if k.before is not None and k.before in rules:
            rules.insert(rules.index(k.before), k.rule)
        elif ban:
            rules.insert(0, k.rule)
        else:
            rules.append(k.rule)
    return config._replace(rules=tuple(rules), sets=sets), notes


def _toml(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def parse_runtime(text: str, source: str = "runtime file") -> RuntimeSpec:
    """The runtime file's contents. Errors (UsageError) name the file."""
    try:
        doc = _toml(text)
    except ValueError as exc:
        raise UsageError(f"{source}: {str(exc)[:200]}") from None
    unknown = sorted(set(doc) - {"sets", "rule"})
    if unknown:
        raise UsageError(f"{source}: unknown key {quote(unknown[0])} (expected sets, rule)")
    raw_sets = doc.get("sets", {})
    if not isinstance(raw_sets, dict):
        raise UsageError(f"{source}: sets must be a table of NAME = [elements]")
    sets: dict[str, list[Element]] = {}
    for name, members in raw_sets.items():
        if not SET_NAME_RE.match(name) or not isinstance(members, list) or not all(
                isinstance(m, str) for m in members):
            raise UsageError(f"{source}: bad set {quote(name)}")
        try:
            sets[name] = [parse_element(m) for m in members]
        except UsageError as exc:
            raise UsageError(f"{source}: set {name}: {exc}") from None
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list):
        raise UsageError(f"{source}: rule must be [[rule]] tables")
    rules: list[KeptRule] = []
    for entry in raw_rules:
        if not isinstance(entry, dict) or not isinstance(entry.get("rule"), str) or set(entry) - {"rule", "before"} \
                or not isinstance(entry.get("before", ""), str):
            raise UsageError(f"{source}: each [[rule]] has rule = \"...\" and optionally before = \"...\"")
        try:
            before = entry.get("before")
            rules.append(KeptRule(parse_rule(entry["rule"]), None if before is None else parse_rule(before)))
        except UsageError as exc:
            raise UsageError(f"{source}: {exc}") from None
    return RuntimeSpec(sets, tuple(rules))


def format_runtime(rt: RuntimeSpec, config: str) -> str:
    """The runtime file (:func:`parse_runtime` reads it back), its header
    naming ``config``, the file it adds to."""
    out = [f"# pyxdp's runtime state: what changed at run time on top of {config} (which pyxdp never writes).",
           "# Written by 'pyxdp-load save-runtime' (at stop and by its timer); 'pyxdp-load up' on fresh state",
           "# (at boot) puts it back. Not for editing: change the config file, or the running firewall.",
           "", "[sets]"]
    for name, members in rt.sets.items():
        out.append(f"{name} = [")
        out += [f'    "{e}",' for e in sort_elements(members)]
        out.append("]")
    for k in rt.rules:
        out += ["", "[[rule]]", f'rule = "{k.rule}"'] + ([f'before = "{k.before}"'] if k.before is not None else [])
    return "\n".join(out) + "\n"
