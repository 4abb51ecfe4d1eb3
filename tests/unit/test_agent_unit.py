"""The agent's systemd unit runs the agent beside pyxdp.service and is never needed for the filter to
enforce (systemd-analyze verifies it with the other units: tests/unit/test_up.py; what the agent does:
tests/kernel/test_agent.py)."""

from __future__ import annotations

import configparser
import os

from helpers.env import SYSTEMD_UNIT

AGENT_UNIT = os.path.join(os.path.dirname(SYSTEMD_UNIT), "pyxdp-agent.service")


def test_the_agent_unit_runs_the_agent_and_only_wants_pyxdp_service() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(AGENT_UNIT)
    assert unit["Service"]["ExecStart"].split() == ["/usr/local/sbin/pyxdp-load", "agent"]
    assert unit["Unit"]["Wants"] == "pyxdp.service" and "Requires" not in unit["Unit"]  # never needed to enforce
    assert "pyxdp.service" in unit["Unit"]["After"].split()
