"""The libbpf binding: cffi declarations (pre-parsed, see tools/build_ffi.py),
``dlopen("libbpf.so.1")`` on first use, and the conversion of libbpf's
``-errno`` / NULL returns into typed exceptions. Nothing here is compiled."""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import LibbpfMissing, bpf_error
from ._libbpf_ffi import ffi

if TYPE_CHECKING:
    from typing import Any

__all__ = ["ffi", "lib", "check", "check_ptr", "num_possible_cpus", "environment_trusted", "libbpf_soname"]

LIBBPF_SONAME = "libbpf.so.1"
_AT_SECURE = 23  # <elf.h>: the kernel set it for a setuid/setgid/file-capability exec

_lib: Any = None


def _at_secure() -> bool:
    """The auxiliary vector's AT_SECURE (what glibc's secure_getenv checks)."""
    try:
        with open("/proc/self/auxv", "rb") as fh:
            auxv = fh.read()
    except OSError:
        return False
    word = struct.calcsize("L")
    for i in range(0, len(auxv) - 2 * word + 1, 2 * word):
        key, val = struct.unpack_from("LL", auxv, i)
        if key == _AT_SECURE:
            return bool(val)
        if key == 0:
            break
    return False


def environment_trusted(
    environ: Mapping[str, str] | None = None,
    ids: tuple[int, int, int, int] | None = None,
    secure: bool | None = None,
) -> bool:
    """Whether environment knobs that name code to run (``PYXDP_LIBBPF``) may
    be honoured. False when the real and effective uid or gid differ (setuid,
    setgid), when the kernel marked the process AT_SECURE (file capabilities),
    or under sudo (``SUDO_UID`` is set): there the environment belongs to
    someone other than the privileged user. ``environ``, ``ids`` (uid, euid,
    gid, egid) and ``secure`` default to this process's; tests pass fakes."""
    env = os.environ if environ is None else environ
    uid, euid, gid, egid = (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) if ids is None else ids
    if uid != euid or gid != egid:
        return False
    if "SUDO_UID" in env:
        return False
    return not (_at_secure() if secure is None else secure)


def libbpf_soname(
    environ: Mapping[str, str] | None = None,
    ids: tuple[int, int, int, int] | None = None,
    secure: bool | None = None,
) -> str:
    """What to dlopen: ``$PYXDP_LIBBPF`` when set and the environment is
    trusted (see :func:`environment_trusted`), else ``libbpf.so.1``."""
    env = os.environ if environ is None else environ
    wanted = env.get("PYXDP_LIBBPF")
    if wanted and environment_trusted(env, ids, secure):
        return wanted
    return LIBBPF_SONAME


def _load() -> Any:
    global _lib
    if _lib is None:
        soname = libbpf_soname()
        try:
            lib = ffi.dlopen(soname)
        except OSError as exc:
            raise LibbpfMissing(
                f"cannot load {soname} ({exc}); install libbpf1 (Debian: apt-get install libbpf1)"
            ) from None
        if not os.environ.get("PYXDP_DEBUG"):
            lib.libbpf_set_print(ffi.NULL)  # our errors say it in one line
        _lib = lib
    return _lib


class _Lib:
    """Attribute access loads libbpf on first use, so importing costs nothing."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_load(), name)


lib: Any = _Lib()


def check(ret: int, what: str) -> int:
    """Raise the typed error for a libbpf ``-errno`` return (libbpf 1.x mode)."""
    if ret < 0:
        raise bpf_error(-ret, what)
    return ret


def check_ptr(ptr: Any, what: str) -> Any:
    """Raise the typed error for a NULL return (errno says why)."""
    if ptr == ffi.NULL:
        raise bpf_error(ffi.errno or 1, what)
    return ptr


_ncpus = 0


def num_possible_cpus() -> int:
    global _ncpus
    if not _ncpus:
        _ncpus = check(lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")
    return _ncpus
