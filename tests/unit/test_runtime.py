"""The runtime file (pyxdp.model.runtime, no root): what changed at run time is found against the config the
last 'up' applied, written and read back, and merged on top of the config (config first)."""

from __future__ import annotations

import pytest

from pyxdp import UsageError, parse_ruleset
from pyxdp.model.rulefile import RuleSetSpec
from pyxdp.model.rules import parse_rule
from pyxdp.model.runtime import KeptRule, RuntimeSpec, extract, format_runtime, merge, parse_runtime

BASE = parse_ruleset('''rules = ["deny proto udp to any port 5002", "allow 22/tcp", "deny from @blocked"]
[sets]
blocked = ["192.0.2.0/24", "198.51.100.7"]
''')


def running(*, rules: list[str], sets: dict[str, list[str]]) -> RuleSetSpec:
    body = "rules = [" + ", ".join(f'"{r}"' for r in rules) + "]\n[sets]\n"
    body += "".join(f"{k} = [" + ", ".join(f'"{e}"' for e in v) + "]\n" for k, v in sets.items())
    return parse_ruleset(body)


NOW = running(rules=["deny from @banned", "deny proto udp to any port 5002", "deny from 10.9.9.9", "allow 22/tcp",
                     "deny from @blocked", "allow 80/tcp"],
              sets={"blocked": ["192.0.2.0/24", "198.51.100.7", "192.0.2.200"], "banned": ["203.0.113.9 ttl 7190"],
                    "empty": []})


def test_extract_keeps_elements_the_base_lacks_and_bans_rule_and_hand_rules_on_request() -> None:
    rt = extract(NOW, BASE, keep_rules=False)
    assert {k: [str(e) for e in v] for k, v in rt.sets.items()} == {
        "blocked": ["192.0.2.200/32"], "banned": ["203.0.113.9/32 ttl 7190"], "empty": []}
    assert rt.rules == (KeptRule(parse_rule("deny from @banned"), parse_rule("deny proto udp to any port 5002")),)
    assert rt.summary() == "2 set elements (3 sets), 1 rule"
    kept = extract(NOW, BASE, keep_rules=True).rules
    assert [(str(k.rule), str(k.before) if k.before else None) for k in kept] == [
        ("deny from @banned", "deny proto udp to any port 5002"),
        ("deny from 10.9.9.9/32", "allow proto tcp to any port 22"),
        ("allow proto tcp to any port 80", None)]
    # nothing changed at run time: nothing to keep
    assert extract(BASE, BASE, keep_rules=True) == RuntimeSpec({}, ())
    # 'deny from @blocked' is the config's own rule for its set: never a ban's rule
    assert extract(running(rules=["deny from @blocked"], sets={"blocked": []}), BASE, False).rules == ()


def test_the_file_round_trips_and_refuses_what_it_does_not_know() -> None:
    rt = extract(NOW, BASE, keep_rules=True)
    text = format_runtime(rt, "/etc/pyxdp/pyxdp.toml")
    assert text.startswith("# pyxdp's runtime state: what changed at run time on top of /etc/pyxdp/pyxdp.toml")
    assert parse_runtime(text) == rt
    assert format_runtime(parse_runtime(text), "/etc/pyxdp/pyxdp.toml") == text
    for bad, says in [("x = 1", "unknown key 'x'"), ("[sets]\nb = [\"nope\"]", "set b: bad"),
                      ("[[rule]]\nrule = 5", "each [[rule]] has rule"), ("[[rule]]\nrule = \"frob\"", "rf: "),
                      ("[[rule]]\nrule = \"allow 22\"\nafter = \"x\"", "each [[rule]]"), ("[", "rf: ")]:
        with pytest.raises(UsageError) as exc:
            parse_runtime(bad, "rf")
        assert says in str(exc.value), (bad, str(exc.value))


def test_merge_puts_the_config_first_and_the_runtime_on_top() -> None:
    rt = extract(NOW, BASE, keep_rules=True)
    # the same config with keep_rules: the running firewall back, rule for rule
    spec, notes = merge(BASE._replace(keep_rules=True), rt)
    assert [str(r) for r in spec.rules] == [str(r) for r in NOW.rules] and notes == []
    assert {k: sorted(str(e) for e in v) for k, v in spec.sets.items()} == \
        {k: sorted(str(e) for e in v) for k, v in NOW.sets.items()}
    # without keep_rules: only the ban's rule comes back (first); the hand-made ones do not
    spec, _ = merge(BASE, rt)
    assert [str(r) for r in spec.rules] == ["deny from @banned", "deny proto udp to any port 5002",
                                            "allow proto tcp to any port 22", "deny from @blocked"]
    # an edited config: its rule the ban's rule ran before is gone (the ban's rule goes first), an element the
    # config took out stays out (it was the config's, not the runtime's), a config that now uses @banned
    # itself gets no second rule for it
    edited = parse_ruleset('rules = ["allow 22/tcp", "deny from @blocked"]\n[sets]\nblocked = ["198.51.100.7"]\n')
    spec, _ = merge(edited, rt)
    assert [str(r) for r in spec.rules] == ["deny from @banned", "allow proto tcp to any port 22",
                                            "deny from @blocked"]
    assert sorted(str(e) for e in spec.sets["blocked"]) == ["192.0.2.200/32", "198.51.100.7/32"]
    owns = parse_ruleset('rules = ["deny proto tcp from @banned"]\n[sets]\nbanned = []\n')
    spec, _ = merge(owns, rt)
    assert [str(r) for r in spec.rules] == ["deny proto tcp from @banned"]
    assert [str(e) for e in spec.sets["banned"]] == ["203.0.113.9/32 ttl 7190"]
    # a kept hand rule whose set is gone is left out, with a note
    rt2 = RuntimeSpec({}, (KeptRule(parse_rule("allow from @office")),))
    spec, notes = merge(BASE._replace(keep_rules=True), rt2)
    assert spec.rules == BASE.rules and notes == ["runtime rule 'allow from @office' left out: set office is gone"]
