"""The libbpf binding: cffi declarations (pre-parsed, see tools/build_ffi.py),
``dlopen("libbpf.so.1")`` on first use, and the conversion of libbpf's
``-errno`` / NULL returns into typed exceptions. Nothing here is compiled."""

from __future__ import annotations

import os

from ._libbpf_ffi import ffi
from ._record import TYPE_CHECKING
from .errors import LibbpfMissing, bpf_error

if TYPE_CHECKING:
    from typing import Any

__all__ = ["ffi", "lib", "check", "check_ptr", "num_possible_cpus"]

LIBBPF_SONAME = os.environ.get("PYXDP_LIBBPF", "libbpf.so.1")

_lib: Any = None


def _load() -> Any:
    global _lib
    if _lib is None:
        try:
            lib = ffi.dlopen(LIBBPF_SONAME)
        except OSError as exc:
            raise LibbpfMissing(
                f"cannot load {LIBBPF_SONAME} ({exc}); install libbpf1 (Debian: apt-get install libbpf1)"
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
