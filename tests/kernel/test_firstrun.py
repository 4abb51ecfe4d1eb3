"""A new user's first minutes, the part that needs root: errors of
attach/detach that say what to do, and the readers (status, list) and a ban
starting without the imports they do not need. Setup and 'pyxdp-load' alone
printing its commands: tests/unit/test_firstrun.py."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from helpers.cli import fails, ok
from helpers.env import NetPair, needs_root, sh

from pyxdp import UsageError

# ---- no command -------------------------------------------------------------------------------


# ---- attach and detach say what to do ---------------------------------------------------------------


@needs_root
def test_detach_without_netns_names_the_namespace(pin_dir: str, netpair: NetPair, tmp_path: Any) -> None:
    log = str(tmp_path / "audit.log")
    ok("--log-file", log, "attach", netpair.vb, "--netns", netpair.b, pin_dir=pin_dir)
    fails(2, f"{netpair.vb} is attached in netns {netpair.b}: add --netns {netpair.b}",
          "detach", netpair.vb, pin_dir=pin_dir)
    fails(2, f"{netpair.vb} is not attached in netns {netpair.a}; it is attached in netns {netpair.b}: "
          f"use --netns {netpair.b}", "detach", netpair.vb, "--netns", netpair.a, pin_dir=pin_dir)
    fails(2, f"pyxdp is not attached to lo in netns {netpair.b} (see 'pyxdp-load status')",
          "detach", "lo", "--netns", netpair.b, pin_dir=pin_dir)
    assert netpair.vb in ok("status", pin_dir=pin_dir)  # the refused detaches changed nothing
    assert "state removed" in ok("--log-file", log, "detach", netpair.vb, "--netns", netpair.b, pin_dir=pin_dir)
    with open(log) as fh:
        lines = fh.read().splitlines()
    assert len(lines) == 3, lines  # state made, attach, detach: the refused ones are not changes
    assert "]: state created (" in lines[0]
    assert f"]: attach {netpair.vb} (netns {netpair.b}): program " in lines[1] and " mode | uid=0 " in lines[1]
    assert f"]: detach {netpair.vb} (netns {netpair.b}); no interface left: state removed | uid=0 " in lines[2]


@needs_root
def test_attach_errors_say_what_to_do(pin_dir: str, netpair: NetPair, tmp_path: Any) -> None:
    fails(2, "no interface 'nosuch0' (see 'ip link'; in a namespace: --netns NAME)", "attach", "nosuch0",
          pin_dir=pin_dir)
    fails(2, f"no interface 'nosuch0' in netns {netpair.b} (see 'ip -n {netpair.b} link')",
          "attach", "nosuch0", "--netns", netpair.b, pin_dir=pin_dir)
    log = tmp_path / "audit.log"
    fails(1, "(--mode generic works on any interface)", "--log-file", str(log), "attach", "lo", "--netns", netpair.b,
          "--mode", "native", pin_dir=pin_dir)
    assert not os.path.exists(pin_dir)  # a failed first attach leaves no state, and the audit trail says so
    whats = [ln.split("]: ", 1)[1].split(" | ")[0] for ln in log.read_text().splitlines()]
    assert whats == ["state created (1048576 set elements per family, 1024 rules)",
                     "state removed again: the change it was made for failed"], whats


# ---- start-up: readers do not import what they do not use ----------------------------------------


def _imports_of(args: list[str], env: dict[str, str] | None = None) -> tuple[int, set[str]]:
    """Exit code of the CLI run in a fresh interpreter, and the top-level modules it imported."""
    code = ("import sys\nfrom pyxdp.cli import main\nrc = main(sys.argv[1:])\n"
            "sys.stdout.flush()\nprint('MODULES', ' '.join(sorted(sys.modules)), file=sys.stderr)\nsys.exit(rc)\n")
    e = dict(os.environ)
    e.pop("PYXDP_DEBUG", None)
    e.update(env or {})
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=e, timeout=60)
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("MODULES ")]
    assert line, r.stderr
    return r.returncode, set(line[0].split()[1:])


@needs_root
def test_status_list_and_ban_do_not_import_what_they_do_not_need(pin_dir: str, netpair: NetPair) -> None:
    ok("attach", netpair.vb, "--netns", netpair.b, pin_dir=pin_dir)
    ok("ban", "192.0.2.7", pin_dir=pin_dir)
    rc, mods = _imports_of(["--pin-dir", pin_dir, "status"])
    assert rc == 0
    assert "pyroute2" not in mods  # the attached interface is checked over a plain netlink socket
    assert "pyxdp.kernel.rtnl" in mods
    rc, mods = _imports_of(["--pin-dir", pin_dir, "list"])
    assert rc == 0
    assert not {"pyroute2", "pyxdp.model.rulefile", "pyxdp.kernel.rtnl", "logging", "threading"} & mods, mods
    # a ban (fail2ban runs one per ban) on a host without syslog and without --log-file: no logging at all
    rc, mods = _imports_of(["--pin-dir", pin_dir, "ban", "192.0.2.8"], {"PYXDP_SYSLOG": "off"})
    assert rc == 0
    assert not {"pyroute2", "logging", "logging.handlers"} & mods, mods
    assert not {"argparse", "pyxdp.cli.parser"} & mods, mods  # its plain form is read without argparse
    assert {"pyxdp.cli.sets", "pyxdp.cli.quick"} <= mods and not {"pyxdp.cli.rules", "pyxdp.cli.attach"} & mods, mods
    text = ok("status", pin_dir=pin_dir)
    assert f"{netpair.vb} (ifindex " in text and "NOT attached" not in text
    sh("ip", "-n", netpair.b, "link", "set", netpair.vb, "xdp", "off")
    assert "(NOT attached any more)" in ok("status", pin_dir=pin_dir)


@needs_root
def test_plain_netlink_reads_what_iproute2_reads(pin_dir: str, netpair: NetPair) -> None:
    """pyxdp.kernel.rtnl (status) and pyxdp.kernel.xdp (attach, detach) against iproute2's 'ip -d link': the same
    interface index, program and mode for interfaces in the host's namespace and in others, with and without a
    program, native and generic."""
    import json

    from pyxdp.kernel.rtnl import Links
    from pyxdp.kernel.xdp import Netlink

    ok("attach", netpair.vb, "--netns", netpair.b, pin_dir=pin_dir)
    ok("attach", "lo", "--netns", netpair.a, "--mode", "generic", pin_dir=pin_dir)
    seen = 0
    for ns, names in ((None, ["lo"]), (netpair.a, ["lo", netpair.va]), (netpair.b, ["lo", netpair.vb])):
        with Links(ns) as mine, Netlink(ns) as other:
            for name in names:
                link = json.loads(sh("ip", *(["-n", ns] if ns else []), "-j", "-d", "link", "show", "dev", name)
                                  .stdout)[0]
                x = link.get("xdp") or {}
                want = (link["ifindex"], x.get("prog", {}).get("id", 0),
                        {1: "native", 2: "generic"}.get(x.get("mode", 0)))
                got = mine.state(name)
                assert (got.ifindex, got.prog_id, got.mode.value if got.mode else None) == want, (ns, name)
                assert other.state(name) == got and mine.state_by_index(got.ifindex) == got
                seen += bool(got.prog_id)
            with pytest.raises(UsageError):
                mine.state("nosuch0")
            assert mine.state_by_index(1 << 30) is None
    assert seen == 2
    with pytest.raises(UsageError, match="no network namespace"):
        Links("pxt-no-such-ns")


# ---- setup: one quiet install, a link, a rerun without the index --------------------------------


