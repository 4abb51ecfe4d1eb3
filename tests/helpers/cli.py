"""Run ``pyxdp-load`` as a user does and check how it ends."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

BIN = os.path.join(os.path.dirname(sys.executable), "pyxdp-load")


def run(*args: str, pin_dir: str | None = None, env: dict[str, str] | None = None, input: str | None = None,
        no_caps: bool = False, drop_env: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    cmd = [BIN] + (["--pin-dir", pin_dir] if pin_dir is not None else []) + list(args)
    if no_caps:  # root without capabilities (an empty bounding set empties root's set at exec)
        cmd = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *cmd]
    e = dict(os.environ)  # PYTHONPATH passes through: the CLI runs the source tree
    for k in ("PYXDP_DEBUG", "PYXDP_PIN_DIR", "PYXDP_LOCK_TIMEOUT", "PYXDP_TEST_KILL_AFTER", *drop_env):
        e.pop(k, None)
    e.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, env=e, input=input, timeout=60)


def ok(*args: str, **kw: Any) -> str:
    r = run(*args, **kw)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    assert r.stderr == "", r.stderr
    return r.stdout


def fails(code: int, says: str, *args: str, **kw: Any) -> str:
    """The command fails with ``code`` and one error line containing ``says``."""
    r = run(*args, **kw)
    assert r.returncode == code, (args, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyxdp-load: error: "), r.stderr
    assert says in lines[0], lines[0]
    return lines[0]
