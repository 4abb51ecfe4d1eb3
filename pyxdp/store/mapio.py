"""Map I/O for many keys at once: batch writes and deletes, one by one where
the kernel has no batch op for the map."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..errors import BpfError

if TYPE_CHECKING:
    from ..kernel.bpf import Map

ENOTSUPP = 524  # the kernel's own "no such operation for this map type" (not in errno)
NO_BATCH_ERRNOS = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, ENOTSUPP)
BATCH = 65536


def _no_batch_support(exc: BpfError) -> bool:
    """The kernel has no batch op for this map (and so did nothing)."""
    done: int = getattr(exc, "done", 0)
    return exc.errno in NO_BATCH_ERRNOS and done == 0


def write_all(m: Map, keys: list[bytes], values: list[bytes]) -> None:
    """Batch writes, one by one where the kernel has no batch op for the map."""
    for pos in range(0, len(keys), BATCH):
        ks, vs = keys[pos : pos + BATCH], values[pos : pos + BATCH]
        try:
            m.update_batch(b"".join(ks), b"".join(vs))
        except BpfError as exc:
            if not _no_batch_support(exc):
                raise
            for k, v in zip(ks, vs):
                m.update(k, v)


def delete_all(m: Map, keys: list[bytes]) -> int:
    """Delete those of ``keys`` that are there; returns how many were."""
    gone = 0
    for pos in range(0, len(keys), BATCH):
        ks = keys[pos : pos + BATCH]
        try:
            gone += m.delete_batch(b"".join(ks))
            continue
        except BpfError as exc:
            if not _no_batch_support(exc) and exc.errno != errno.ENOENT:
                raise
            # one by one from where the batch stopped: a key was missing, or there is no batch op
            start: int = getattr(exc, "done", 0) if exc.errno == errno.ENOENT else 0
        gone += start
        for k in ks[start:]:
            try:
                m.delete(k)
                gone += 1
            except BpfError as exc2:
                if exc2.errno != errno.ENOENT:
                    raise
    return gone
