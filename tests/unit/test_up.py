"""The config file of 'up' without root: it parses and formats back unchanged, and its errors name the
key and the line; the systemd unit says what the README says and systemd-analyze verifies it (what 'up'
does with the file: tests/kernel/test_up.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest
from helpers.cli import BIN
from helpers.env import SYSTEMD_UNIT, systemd_unit
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxdp import (
    InterfaceSpec,
    RuleSetSpec,
    UsageError,
    Verdict,
    format_ruleset,
    parse_prefix,
    parse_rule,
    parse_ruleset,
)
from pyxdp.model.rulefile import Element

CONFIG = '''# pyxdp firewall and its interfaces: 'pyxdp-load up FILE' installs it, 'pyxdp-load save --all' writes it

policy = "drop"
rules = [
    "deny from @banned",
    "allow proto udp to any port 53",
]

[sets]
banned = [
    "203.0.113.7/32 ttl 583",
]

[[interface]]
name = "eth0"
mode = "native"

[[interface]]
name = "vb"
netns = "blue"
mode = "auto"
'''


def test_a_config_file_parses_and_formats_back_unchanged() -> None:
    spec = parse_ruleset(CONFIG, "pyxdp.toml")
    assert spec.interfaces == (InterfaceSpec("eth0", None, "native"), InterfaceSpec("vb", "blue", "auto"))
    assert spec.sets == {"banned": [Element(parse_prefix("203.0.113.7"), 583)]}
    assert format_ruleset(spec) == CONFIG
    assert parse_ruleset(format_ruleset(spec)) == spec
    # hand-written: mode defaults to auto, inline tables work too, and what save writes is explicit
    hand = parse_ruleset('rules = ["allow 22/tcp"]\ninterface = [{name = "eth1"}, {name = "eth1", netns = "x"}]\n')
    assert hand == RuleSetSpec((parse_rule("allow 22/tcp"),), {}, None,
                               (InterfaceSpec("eth1"), InterfaceSpec("eth1", "x", "auto")))
    assert 'name = "eth1"\nmode = "auto"\n' in format_ruleset(hand)
    assert parse_ruleset(format_ruleset(hand)) == hand
    # without interfaces the file is what 'save' always wrote
    assert "[[interface]]" not in format_ruleset(spec._replace(interfaces=()))
    assert format_ruleset(spec._replace(interfaces=())).startswith("# pyxdp firewall: 'pyxdp-load apply FILE'")


def test_optional_wait_and_keep_rules_parse_and_format_back() -> None:
    text = _file('rules = ["allow 22/tcp"]', "", "[runtime]", "keep_rules = true", "", "[[interface]]",
                 'name = "usb0"', "optional = true", "wait = 2.5", "", "[[interface]]", 'name = "eth0"', "wait = 10")
    spec = parse_ruleset(text)
    assert spec.keep_rules and spec.interfaces == (InterfaceSpec("usb0", None, "auto", True, 2.5),
                                                   InterfaceSpec("eth0", None, "auto", False, 10.0))
    out = format_ruleset(spec)
    assert "[runtime]\nkeep_rules = true\n" in out and 'mode = "auto"\noptional = true\nwait = 2.5\n' in out
    assert 'name = "eth0"\nmode = "auto"\nwait = 10\n' in out and parse_ruleset(out) == spec
    assert "[runtime]" not in format_ruleset(spec._replace(keep_rules=False))


_IFNAME = st.text(alphabet="abcxyz019_.:@+-", min_size=1, max_size=15).filter(lambda n: n not in (".", ".."))


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.tuples(_IFNAME, st.none() | _IFNAME, st.sampled_from(["auto", "native", "generic", "offload"])),
                max_size=6, unique_by=lambda t: (t[0], t[1])),
       st.sampled_from([None, Verdict.PASS, Verdict.DROP]))
def test_random_interface_lists_round_trip(ifaces: list[tuple[str, str | None, str]], policy: Verdict | None) -> None:
    spec = RuleSetSpec((parse_rule("deny from @b"),), {"b": [Element(parse_prefix("10.0.0.0/8"), 60)]}, policy,
                       tuple(InterfaceSpec(*t) for t in ifaces))
    text = format_ruleset(spec)
    assert parse_ruleset(text, "saved") == spec
    assert format_ruleset(parse_ruleset(text)) == text


def _file(*lines: str) -> str:
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text,says", [
    (_file("rules = []", "", "[[interface]]", 'name = "eth0"', 'mod = "native"'),
     "cfg.toml line 5: unknown key 'mod' in [[interface]] (expected name, netns, mode"),
    (_file("[[interface]]", 'name = "eth0"', "", "[[interface]]", 'name = "eth1"', 'policy = "drop"'),
     "cfg.toml line 6: unknown key 'policy' in [[interface]]"),
    (_file("rules = []", "[interfaces]", 'name = "eth0"'), "cfg.toml line 2: unknown key 'interfaces' (expected"),
    (_file("[[interface]]", 'mode = "native"'), "cfg.toml line 1: [[interface]] without a name"),
    (_file("[[interface]]", 'name = "eth0/1"'), "cfg.toml line 2: bad interface name 'eth0/1'"),
    (_file("[[interface]]", 'name = "a-very-long-name0"'), "cfg.toml line 2: bad interface name"),
    (_file("[[interface]]", "name = 5"), "cfg.toml line 2: bad interface name '5'"),
    (_file("[[interface]]", 'name = ""'), "cfg.toml line 2: bad interface name ''"),
    (_file("[[interface]]", 'name = "eth0"', 'mode = "fast"'),
     "cfg.toml line 3: bad mode 'fast' for interface eth0: auto, native, generic"),
    (_file("[[interface]]", 'name = "eth0"', 'netns = "../x"'), "cfg.toml line 3: bad netns '../x'"),
    (_file("[[interface]]", 'name = "eth0"', 'netns = ""'), "cfg.toml line 3: bad netns ''"),
    (_file("[[interface]]", 'name = "eth0"', "", "[[interface]]", 'name = "eth0"'),
     "cfg.toml line 5: interface eth0 given twice"),
    (_file("[[interface]]", 'name = "eth0"', 'netns = "b"', "[[interface]]", 'name = "eth0"', 'netns = "b"'),
     "cfg.toml line 5: interface eth0 (netns b) given twice"),
    (_file("[interface]", 'name = "eth0"'), "cfg.toml line 1: interface must be [[interface]] tables"),
    (_file("interface = ['eth0']"), "cfg.toml line 1: interface must be [[interface]] tables"),
    (_file("[[interface]]", f'name = "{"x" * 100_000}"'), "cfg.toml line 2: bad interface name"),
    (_file("[[interface]]", 'name = "eth0"', 'optional = "yes"'), "cfg.toml line 3: optional must be true or false"),
    (_file("[[interface]]", 'name = "eth0"', "wait = -1"), "cfg.toml line 3: wait must be a number of seconds"),
    (_file("[[interface]]", 'name = "eth0"', "wait = 601"), "cfg.toml line 3: wait must be a number of seconds"),
    (_file("[[interface]]", 'name = "eth0"', "wait = true"), "cfg.toml line 3: wait must be a number of seconds"),
    (_file("[[interface]]", 'name = "eth0"', 'wait = "5"'), "cfg.toml line 3: wait must be a number of seconds"),
    (_file("[runtime]", "keep_rules = 1"), "cfg.toml line 2: keep_rules must be true or false"),
    (_file("[runtime]", "keep = true"), "cfg.toml line 2: runtime must be a table with keep_rules = true or false "
                                        "(unknown key 'keep')"),
    (_file("runtime = 5"), "cfg.toml line 1: runtime must be a table"),
])
def test_config_errors_name_the_key_and_the_line(text: str, says: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_ruleset(text, "cfg.toml")
    assert says in str(exc.value)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 400


# ---- the systemd unit ------------------------------------------------------------


def test_unit_says_what_the_readme_says() -> None:
    svc = systemd_unit()["Service"]
    assert svc["Type"] == "oneshot" and svc["RemainAfterExit"] == "yes"
    assert svc["ExecStart"] == "/usr/local/sbin/pyxdp-load up"
    assert svc["ExecReload"] == "/usr/local/sbin/pyxdp-load up"
    # stopping never detaches, and never writes the config file: what changed at run time goes to /var/lib/pyxdp
    assert svc["ExecStop"] == "/usr/local/sbin/pyxdp-load save-runtime"
    assert svc["Environment"] == "PYXDP_CONFIG=/etc/pyxdp/pyxdp.toml"
    assert svc["StateDirectory"] == "pyxdp" and svc["StateDirectoryMode"] == "0700"
    unit = systemd_unit()["Unit"]
    assert "network-pre.target" in unit["Before"].split() and unit["Wants"] == "network-pre.target"
    units = os.path.dirname(SYSTEMD_UNIT)
    for name in os.listdir(units):
        with open(os.path.join(units, name), encoding="utf-8") as fh:
            text = fh.read()
        # no line of any unit writes the config file
        assert not re.search(r"^Exec\w*=.*(save --all|/etc/pyxdp|\$\{?PYXDP_CONFIG)", text, re.M), name


UNITS = ("pyxdp.service", "pyxdp-save.service", "pyxdp-save.timer", "pyxdp-attach@.service", "pyxdp-agent.service")


def _analyze() -> str:
    analyze = shutil.which("systemd-analyze") or ("/usr/bin/systemd-analyze"
                                                  if os.path.exists("/usr/bin/systemd-analyze") else None)
    if analyze is None:
        pytest.fail("systemd-analyze is not installed: run scripts/setup.sh --test")
    return analyze


def _copies(tmp_path: Any, program: str) -> list[str]:
    """The shipped units in ``tmp_path`` with ``program`` in place of /usr/local/sbin/pyxdp-load (which setup
    links and this host may lack: 'verify' checks that an Exec line's program exists); the template as an
    instance for one interface (verify takes no bare template). What verify is given."""
    units = os.path.dirname(SYSTEMD_UNIT)
    assert sorted(os.listdir(units)) == sorted(UNITS)
    for name in UNITS:
        with open(os.path.join(units, name), encoding="utf-8") as fh:
            text = fh.read()
        (tmp_path / name).write_text(text.replace("/usr/local/sbin/pyxdp-load", program))
    os.symlink("pyxdp-attach@.service", tmp_path / "pyxdp-attach@eth1.service")
    return [str(tmp_path / n) for n in UNITS if "@." not in n] + [str(tmp_path / "pyxdp-attach@eth1.service")]


def test_systemd_analyze_verifies_the_units(tmp_path: Any) -> None:
    """pyxdp.service, the save timer and its service, and the hotplug template (as pyxdp-attach@eth1);
    'verify' needs no running systemd."""
    analyze = _analyze()
    with open(SYSTEMD_UNIT, encoding="utf-8") as fh:
        assert len(re.findall(r"^Exec(Start|Reload|Stop)=/usr/local/sbin/pyxdp-load ", fh.read(), re.M)) == 3
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="notice", SYSTEMD_LOG_COLOR="0")
    good = tmp_path / "good"
    good.mkdir()
    r = subprocess.run([analyze, "verify", "--man=no", *_copies(good, BIN)], capture_output=True, text=True,
                       env=env, timeout=60, cwd=good)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    # verify does fail: each unit it cannot take says so (the template's instance too)
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in _copies(bad, "/nonexistent/pyxdp-load"):
        if path.endswith(".timer"):
            continue
        r = subprocess.run([analyze, "verify", "--man=no", path], capture_output=True, text=True, env=env,
                           timeout=60, cwd=bad)
        assert r.returncode != 0 and "/nonexistent/pyxdp-load" in r.stderr, path
