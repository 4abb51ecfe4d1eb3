"""The writers' lock on a pin directory: an exclusive ``flock`` on the
directory itself. A writer that has to wait says so once, and gives up after
a timeout (30 s, or ``$PYXDP_LOCK_TIMEOUT`` seconds) instead of hanging."""

from __future__ import annotations

import errno
import fcntl
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from ..errors import LockTimeout, NotLoaded, UnsafeState, UsageError

__all__ = ["DirLock", "DEFAULT_TIMEOUT", "lock_timeout", "lock_holder"]

DEFAULT_TIMEOUT = 30.0

# The directories this process holds locked through a DirLock: (st_dev, st_ino) -> the pid that took the
# lock (a forked child inherits the table, not the locks it names)
_HELD: dict[tuple[int, int], int] = {}


def _key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _other_threads() -> bool:
    """Whether another thread of this process runs (one that could release a lock)."""
    threading = sys.modules.get("threading")
    return threading is not None and threading.active_count() > 1


def lock_timeout(environ: Mapping[str, str] | None = None) -> float:
    """``$PYXDP_LOCK_TIMEOUT`` (seconds, 0 = do not wait, ``inf`` = wait
    forever), else 30. A value that is not a number >= 0 is a UsageError."""
    raw = (os.environ if environ is None else environ).get("PYXDP_LOCK_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        val = float(raw) if raw.isascii() else -1.0  # float() also takes '٣'
    except ValueError:
        val = -1.0
    if math.isnan(val) or val < 0:
        raise UsageError(f"PYXDP_LOCK_TIMEOUT must be a number of seconds (0 or more), not {raw[:40]!r}")
    return val


def lock_holder(fd: int) -> int | None:
    """The pid /proc/locks names for the flock on ``fd``'s file, if any
    (another process's, or this one's through another open of the file)."""
    st = os.fstat(fd)
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 00:1e:5678 0 EOF"; waiters have "->" after the number
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == want:
                    pid = int(parts[4]) if parts[4].isdigit() else 0
                    return pid or None
    except OSError:
        return None
    return None


class DirLock:
    """An exclusive flock on the directory ``path``, held until
    :meth:`release` (or the end of a ``with`` block).

    The directory is opened with O_NOFOLLOW (a symlink raises
    :class:`UnsafeState`; a missing directory :class:`NotLoaded`; another
    failure to open it :class:`UsageError`). The lock is tried at once; when
    another writer holds it, ``on_wait`` (if given) is called once with a
    line like "waiting for another pyxdp writer (pid 1234) to finish with
    DIR", and the lock is retried until ``timeout`` seconds have passed
    (``None``: ``$PYXDP_LOCK_TIMEOUT`` or 30; 0: no wait; ``math.inf``: no
    limit), then :class:`LockTimeout` is raised. A lock dropped without
    :meth:`release` warns with ResourceWarning when collected, and is
    released then.

    Not re-entrant: a second DirLock on a directory this process already
    holds locked (a second ``Filter.open`` while the first is open) is
    refused at once with :class:`LockTimeout` saying so, when no other thread
    runs that could release the first; with other threads it waits as for
    another process, and the wait line and the error name this process
    ("another Filter of this process (pid N)")."""

    def __init__(self, path: str, timeout: float | None = None,
                 on_wait: Callable[[str], None] | None = None) -> None:
        self._fd = -1
        self.path = path
        self.timeout = lock_timeout() if timeout is None else float(timeout)
        if math.isnan(self.timeout) or self.timeout < 0:
            raise UsageError(f"lock timeout must be 0 or more seconds, not {timeout}")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotLoaded(f"pin dir {path} does not exist") from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
                raise UnsafeState(path, f"pin dir {path} is a symlink, which pyxdp does not follow: "
                                  "remove it or choose another --pin-dir") from None
            raise UsageError(f"cannot lock {path}: {exc.strerror}") from None
        try:
            self._acquire(fd, on_wait)
            _HELD[_key(fd)] = os.getpid()
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _try(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _acquire(self, fd: int, on_wait: Callable[[str], None] | None) -> None:
        if self._try(fd):
            return
        if _HELD.get(_key(fd)) == os.getpid():
            if not _other_threads():  # nothing in this process can release it while we wait
                raise LockTimeout(
                    self.path, 0,
                    f"this process (pid {os.getpid()}) holds the writers' lock on {self.path} already, through "
                    "another open Filter (or DirLock): close that one first (the lock is not re-entrant)",
                )
            who = f"another Filter of this process (pid {os.getpid()})"
        else:
            pid = lock_holder(fd)
            who = f"another pyxdp writer (pid {pid})" if pid else "another pyxdp writer"
        if on_wait is not None and self.timeout > 0:
            on_wait(f"waiting for {who} to finish with {self.path}")
        deadline = time.monotonic() + self.timeout
        delay = 0.01
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.2)
            if self._try(fd):
                return
        raise LockTimeout(
            self.path, self.timeout,
            f"{who} holds {self.path} for over {self.timeout:g} s; if it is stuck, stop it "
            "(an open Filter holds the lock until close()), or set PYXDP_LOCK_TIMEOUT to wait longer",
        )

    @property
    def locked(self) -> bool:
        return self._fd >= 0

    @property
    def fd(self) -> int:
        """The locked directory's fd (valid until :meth:`release`)."""
        if self._fd < 0:
            raise ValueError("DirLock is released")
        return self._fd

    def release(self) -> None:
        """Release the lock (closing the fd releases it); a second call does nothing."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                key = _key(fd)
                if _HELD.get(key) == os.getpid():
                    del _HELD[key]
            finally:
                os.close(fd)

    def __enter__(self) -> DirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self, _finalizing: Callable[[], bool] = sys.is_finalizing) -> None:
        if getattr(self, "_fd", -1) >= 0:
            try:
                if not _finalizing():  # at interpreter exit: no warning (it could not be formatted), only release
                    warnings.warn(f"DirLock on {self.path} was never released", ResourceWarning, stacklevel=2)
            finally:
                self.release()


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while a change spans several maps: Ctrl-C then
    lands after it, never inside it. (SIGKILL cannot be held: the journal
    covers it.)"""
    import signal

    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
