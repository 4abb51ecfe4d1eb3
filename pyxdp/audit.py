"""The audit trail: every change to a firewall (attach, detach, rules, policy,
sets, bans, apply, tracing on and off) is one record on the standard
``logging`` logger ``pyxdp.audit``, at INFO: what changed (old -> new where
that is cheap to know) and who changed it (uid, the login uid behind sudo when
the kernel knows it, and the parent process's pid and name from /proc).

As a library, pyxdp configures no logging: the logger has a ``NullHandler``
and a program that wants the records gives it (or the root logger) a handler
and level INFO. The command line does that: it sends each record to syslog
(``/dev/log``, facility ``auth``) when that socket exists, and to the file
``--log-file PATH`` names.

This module imports ``logging`` only when a record can go somewhere: while
the process has never imported ``logging``, no handler exists anywhere, so a
record would be dropped unseen, and building it is skipped (``ban``, run once
per ban by fail2ban, stays as quick as before on a host without syslog)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging
    from collections.abc import Iterable
    from typing import IO

    from .model.prefix import Prefix
    from .store.sets import KeySet

NAME = "pyxdp.audit"
SYSLOG_SOCKET = "/dev/log"
SYSLOG_ENV = "PYXDP_SYSLOG"  # another syslog socket, or "off" (ignored under sudo or setuid)
_UNSET_LOGINUID = "4294967295"

_logger: logging.Logger | None = None


def logger() -> logging.Logger:
    """The ``pyxdp.audit`` logger (with its ``NullHandler``)."""
    global _logger
    if _logger is None:
        import logging

        log = logging.getLogger(NAME)
        if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
            log.addHandler(logging.NullHandler())
        _logger = log
    return _logger


def active() -> bool:
    """Whether a record made now would reach a handler at INFO. Callers
    check it before they gather what a record says."""
    logging = sys.modules.get("logging")
    if logging is None:  # never imported: nothing anywhere could take the record
        return False
    return logger().isEnabledFor(logging.INFO)


def _clean(text: str) -> str:
    """One printable line: control characters (a newline in a process name) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def who() -> dict[str, object]:
    """The caller: uid, the kernel's login uid when it differs (the user behind
    sudo or su; unset for services), and the parent process (pid, comm)."""
    uid = os.getuid()
    ppid = os.getppid()
    out: dict[str, object] = {"uid": uid}
    login = _read("/proc/self/loginuid")
    if login.isdigit() and login not in (_UNSET_LOGINUID, str(uid)):
        out["loginuid"] = int(login)
    out["ppid"] = ppid
    out["comm"] = _clean(_read(f"/proc/{ppid}/comm")) or "?"
    return out


def record(pin_dir: str, what: str) -> None:
    """Log one change to the state in ``pin_dir``. ``what`` says what changed."""
    import logging

    log = logger()
    if not log.isEnabledFor(logging.INFO):
        return
    by = who()
    by_text = " ".join(f"{k}={v}" for k, v in by.items())
    log.info("%s | %s pin_dir=%s", _clean(what), by_text, _clean(pin_dir),
             extra={"pyxdp_change": what, "pyxdp_pin_dir": pin_dir, "pyxdp_who": by})


def prefixes_text(items: Iterable[Prefix] | KeySet, count: int, most: int = 4) -> str:
    """Prefixes for a record: all of them when there are at most ``most``,
    else how many (a million banned addresses are not logged one by one)."""
    if count > most:
        return f"{count} prefixes"
    from .store.sets import KeySet

    if not isinstance(items, KeySet):
        return " ".join(str(p) for p in items)
    from .layout import U32
    from .model.prefix import Prefix

    return " ".join(sorted(str(Prefix(fam, k[4:], U32.unpack_from(k)[0] - 32))
                           for fam, keys in items.keys.items() for k in keys))


# ---- for programs: where the records go -------------------------------------------------


def _warn(prog: str, text: str) -> None:
    print(f"{prog}: warning: {_clean(text)}", file=sys.stderr)


def syslog_socket() -> str | None:
    """The syslog socket to use: ``$PYXDP_SYSLOG`` (a path, or ``off``) when
    the environment is the caller's own, else ``/dev/log``; None when it does
    not exist (a container without syslog) or is turned off."""
    path = os.environ.get(SYSLOG_ENV) or SYSLOG_SOCKET
    if path != SYSLOG_SOCKET:
        from .kernel.libbpf import environment_trusted

        if not environment_trusted():  # a sudo caller's environment does not hide changes from syslog
            path = SYSLOG_SOCKET
    if path == "off" or not os.path.exists(path):
        return None
    return path


class _OneLine:
    """Mixin for handlers: a record that cannot be written is one warning line
    on stderr (logging's default prints a traceback)."""

    prog = "pyxdp-load"
    where = ""
    warned = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.warned:  # once: a process that makes many changes says it once
            self.warned = True
            _warn(self.prog, f"audit records not written to {self.where}: {sys.exc_info()[1]}")


def install(log_file: str | None, syslog: str | None, prog: str = "pyxdp-load") -> None:
    """Send the audit records to ``syslog`` (a unix socket path; facility
    auth, identified as ``prog[PID]``) and to ``log_file`` (appended, one line
    per change with the time; created mode 0640, never through a symlink).
    With neither, nothing is imported and nothing happens. A log file that
    cannot be opened raises UsageError; a syslog that refuses is a warning
    on stderr (a ban must not fail because syslog is down), as is a record
    that cannot be written later."""
    if log_file is None and syslog is None:
        return
    import logging

    log = logger()
    log.setLevel(logging.INFO)
    if log_file is not None:
        class FileOut(_OneLine, logging.StreamHandler):  # type: ignore[type-arg]
            pass

        fh = FileOut(_open_log(log_file))
        fh.prog, fh.where = prog, log_file
        fh.setFormatter(logging.Formatter(f"%(asctime)s {prog}[%(process)d]: %(message)s",
                                          datefmt="%Y-%m-%dT%H:%M:%S%z"))
        log.addHandler(fh)
    if syslog is not None:
        import logging.handlers

        class SysLog(_OneLine, logging.handlers.SysLogHandler):
            pass

        try:
            sh = SysLog(address=syslog, facility=logging.handlers.SysLogHandler.LOG_AUTH)
        except OSError as exc:  # Python < 3.11 connects here; later ones when a record is sent
            _warn(prog, f"audit records not written to syslog ({syslog}): {exc}")
            return
        sh.prog, sh.where = prog, f"syslog ({syslog})"
        sh.ident = f"{prog}[{os.getpid()}]: "
        sh.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(sh)


def _open_log(path: str) -> IO[str]:
    """``path`` opened for appending: created 0640 when missing, never through
    a symlink; a regular file or a character device (/dev/null), not a FIFO
    (it would block every command until something reads it). The open does
    not block (O_NONBLOCK), so a FIFO is refused at once."""
    import errno
    import stat

    from .errors import UsageError

    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o640)
    except OSError as exc:
        why = {errno.ELOOP: "a symlink (refused)", errno.ENXIO: "not a regular file (a FIFO)"}.get(
            exc.errno or 0, exc.strerror)
        raise UsageError(f"--log-file {path}: {why}") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
        os.close(fd)
        raise UsageError(f"--log-file {path}: not a regular file ({'a FIFO' if stat.S_ISFIFO(mode) else 'refused'})")
    os.set_blocking(fd, True)
    return open(fd, "a", encoding="utf-8", buffering=1)
