"""The agent's systemd unit: systemd-analyze verifies it beside pyxdp.service, and it runs the agent
(what the agent does: tests/kernel/test_agent.py)."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from typing import Any

import pytest
from helpers.cli import BIN
from helpers.env import SYSTEMD_UNIT

AGENT_UNIT = os.path.join(os.path.dirname(SYSTEMD_UNIT), "pyxdp-agent.service")


def test_systemd_analyze_verifies_the_agent_unit(tmp_path: Any) -> None:
    analyze = shutil.which("systemd-analyze") or ("/usr/bin/systemd-analyze"
                                                  if os.path.exists("/usr/bin/systemd-analyze") else None)
    if analyze is None:
        pytest.fail("systemd-analyze is not installed: run scripts/setup.sh --test")
    for unit in (SYSTEMD_UNIT, AGENT_UNIT):  # with the unit it wants, as installed side by side
        with open(unit, encoding="utf-8") as fh:
            (tmp_path / os.path.basename(unit)).write_text(fh.read().replace("/usr/local/sbin/pyxdp-load", BIN))
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="notice", SYSTEMD_LOG_COLOR="0")
    r = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / "pyxdp-agent.service"),
                        str(tmp_path / "pyxdp.service")], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(AGENT_UNIT)
    assert unit["Service"]["ExecStart"].split()[1:] == ["agent"]
    assert unit["Unit"]["Wants"] == "pyxdp.service" and "Requires" not in unit["Unit"]  # never needed to enforce
