"""Audit records without root: the library configures no logging, and a record is one clean line (the
records of real changes: tests/kernel/test_audit.py)."""

from __future__ import annotations

import logging
import subprocess
import sys


def test_the_library_configures_no_logging() -> None:
    code = """
import sys
import pyxdp, pyxdp.filter, pyxdp.cli
assert 'logging' not in sys.modules, 'importing pyxdp imported logging'
from pyxdp import audit
assert not audit.active()
import logging
assert not audit.active()  # the root logger's level (WARNING) takes no INFO record
log = audit.logger()
assert [type(h).__name__ for h in log.handlers] == ['NullHandler'], log.handlers
assert logging.getLogger().handlers == [] and log.level == logging.NOTSET
logging.basicConfig(level=logging.INFO)
assert audit.active()
print('ok')
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout == "ok\n", r.stderr


def test_a_record_is_one_clean_line(records: list[logging.LogRecord]) -> None:
    from pyxdp import audit

    audit.record("/sys/fs/bpf/x\ny", "set @a: add 192.0.2.0/24\r\n forged line")
    (rec,) = records
    msg = rec.getMessage()
    assert "\n" not in msg and "\r" not in msg
    assert msg.startswith("set @a: add 192.0.2.0/24\\x0d\\x0a forged line | uid=")
    assert msg.endswith(" pin_dir=/sys/fs/bpf/x\\x0ay")
