"""Every exception pyxdp raises. Each subclasses the builtin that matches it,
so ``except KeyError`` or ``except PermissionError`` keeps working."""

from __future__ import annotations

import errno as _errno
import os


class PyxdpError(Exception):
    """Base of all pyxdp errors. ``str()`` is one line fit for a terminal."""


class UsageError(PyxdpError, ValueError):
    """Bad input from the caller: an address, port, interface name, file."""


class RuleExists(UsageError):
    """The rule is in the list already (``number``); the CLI skips it, as ufw does."""

    def __init__(self, msg: str, number: int, inserting: bool = False) -> None:
        super().__init__(msg)
        self.number = number
        self.inserting = inserting  # an insert of a match that is there (ufw: "Skipping inserting existing rule")


class BpfError(PyxdpError, OSError):
    """A libbpf or kernel call failed; ``errno`` holds the kernel's errno."""

    def __init__(self, err: int, what: str) -> None:
        OSError.__init__(self, err, f"{what}: {os.strerror(err)}")
        self.what = what

    def __str__(self) -> str:
        return f"{self.what}: {os.strerror(self.errno or 0)}"


class BpfPermissionError(BpfError, PermissionError):
    """The kernel refused for lack of privilege (EPERM/EACCES)."""


class KeyNotFound(BpfError, KeyError):
    """A map lookup or delete named a key that is not there."""

    def __str__(self) -> str:
        return BpfError.__str__(self)


class MapFull(BpfError):
    """A map refused a new element (E2BIG/ENOMEM)."""


class VerifierError(BpfError):
    """The verifier rejected a program. ``log`` holds the verifier's whole log;
    ``str()`` names the program and the log's last meaningful line."""

    def __init__(self, err: int, what: str, log: str) -> None:
        super().__init__(err, what)
        self.log = log

    def cause(self) -> str:
        lines = [ln.strip() for ln in self.log.splitlines() if ln.strip()]
        for ln in reversed(lines):
            if not ln.startswith(("processed ", "verification time", "stack depth", "--")):
                return ln
        return "no verifier log"

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.log.rstrip().splitlines()[-n:])

    def __str__(self) -> str:
        return f"{self.what}: verifier rejected it: {self.cause()}"


class IncompatibleMap(PyxdpError, ValueError):
    """A pinned map exists but differs from what the object declares."""


class NotLoaded(PyxdpError, FileNotFoundError):
    """No filter state in the pin directory (nothing attached or loaded yet)."""


class AttachError(PyxdpError, OSError):
    """Netlink refused to attach or detach (the extended ack is in the text)."""

    def __init__(self, err: int, msg: str) -> None:
        OSError.__init__(self, err, msg)
        self.msg = msg

    def __str__(self) -> str:
        return self.msg


class NotPrivileged(PyxdpError, PermissionError):
    """The process lacks the capabilities pyxdp needs (root, or CAP_BPF and CAP_NET_ADMIN)."""


class LibbpfMissing(PyxdpError, ImportError):
    """libbpf.so.1 could not be loaded."""


class UnsafeState(PyxdpError, PermissionError):
    """A pin directory (or what it holds) could be changed by someone other
    than root or the caller, or holds what pyxdp did not make: pyxdp refuses
    to use it. ``path`` is the directory."""

    def __init__(self, path: str, msg: str) -> None:
        PermissionError.__init__(self, msg)
        self.path = path
        self.msg = msg

    def __str__(self) -> str:
        return self.msg


class LockTimeout(PyxdpError, TimeoutError):
    """Another writer held the pin directory's lock for longer than the
    timeout. ``path`` is the directory, ``timeout`` the seconds waited."""

    def __init__(self, path: str, timeout: float, msg: str) -> None:
        TimeoutError.__init__(self, msg)
        self.path = path
        self.timeout = timeout
        self.msg = msg

    def __str__(self) -> str:
        return self.msg


_BY_ERRNO: dict[int, type[BpfError]] = {
    _errno.EPERM: BpfPermissionError,
    _errno.EACCES: BpfPermissionError,
    _errno.ENOENT: KeyNotFound,
    _errno.E2BIG: MapFull,
    _errno.ENOMEM: MapFull,
}


def bpf_error(err: int, what: str) -> BpfError:
    """The exception for a failed call, typed by its errno."""
    return _BY_ERRNO.get(err, BpfError)(err, what)


class UnreadableState(PyxdpError, ValueError):
    """The pin directory holds state pyxdp cannot read (a layout record
    missing or zeroed, a map missing) that is still in use: ``running``
    names the interfaces that run its programs. pyxdp leaves it as it is
    (only an explicit ``--force`` makes new state in its place)."""

    def __init__(self, msg: str, running: list[str]) -> None:
        ValueError.__init__(self, msg)
        self.msg = msg
        self.running = running

    def __str__(self) -> str:
        return self.msg
