"""The journal of an ``up`` under way (:func:`pyxdp.up.up`): what it is
about to change and what was there before, pinned in the state as
``up_journal`` before its first change and unpinned as its last step. While
it is pinned, the ``up`` that wrote it either still runs (it holds the
writers' lock) or died; the next command that opens the state then puts
back what was there (:func:`pyxdp.up.undo_up`) and unpins it.

Where: a BPF array map of the control plane's own (no program uses it),
made whole and unpinned first, then pinned under its name in one rename,
so a journal is there complete or not at all. Its entries hold, in
``CHUNK``-byte pieces: a magic word, the body's length and crc32, then
the body (zlib-compressed JSON)."""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any

from .. import layout as L
from ..errors import PyxdpError
from ..kernel.bpf import Map, MapType
from .mapio import write_all
from .objects import UP_JOURNAL_PINS

PIN = UP_JOURNAL_PINS[0]
CHUNK = 4096
MAGIC = b"PXUP"
_HEAD = struct.Struct("=4sII")  # magic, body length, crc32 of the body


def pinned(pin_dir: str) -> bool:
    """Whether an ``up`` journal is pinned in ``pin_dir`` (one stat)."""
    return os.path.lexists(os.path.join(pin_dir, PIN))


def write(pin_dir: str, plan: dict[str, Any]) -> None:
    """Pin ``plan`` as the journal (replacing none: the caller holds the lock
    and found none)."""
    body = zlib.compress(json.dumps(plan, separators=(",", ":")).encode())
    blob = _HEAD.pack(MAGIC, len(body), zlib.crc32(body)) + body
    n = -(-len(blob) // CHUNK)
    blob = blob.ljust(n * CHUNK, b"\0")
    path = os.path.join(pin_dir, PIN)
    tmp = path + "_new"  # bpffs refuses names with dots
    if os.path.lexists(tmp):
        os.unlink(tmp)  # a writer died between pinning and renaming it: it changed nothing yet
    with Map.create(MapType.ARRAY, "pyxdp_up", L.U32.size, CHUNK, n) as m:
        write_all(m, [L.U32.pack(i) for i in range(n)], [blob[i * CHUNK : (i + 1) * CHUNK] for i in range(n)])
        m.pin(tmp)
    os.replace(tmp, path)


def read(pin_dir: str) -> dict[str, Any] | None:
    """The pinned journal, None when there is none; a PyxdpError when it is
    not one this module wrote."""
    path = os.path.join(pin_dir, PIN)
    if not os.path.lexists(path):
        return None
    bad = PyxdpError(f"{path} is not a journal pyxdp wrote (the record of an 'up' under way); "
                     "it is left as it is: look at it, then remove it")
    try:
        with Map.from_pin(path) as m:
            if (m.spec.type, m.spec.key_size, m.spec.value_size) != (MapType.ARRAY, L.U32.size, CHUNK):
                raise bad
            blob = b"".join(m.lookup(L.U32.pack(i)) or b"" for i in range(m.spec.max_entries))
    except OSError as exc:
        raise bad from exc
    if len(blob) < _HEAD.size:
        raise bad
    magic, length, crc = _HEAD.unpack_from(blob)
    body = blob[_HEAD.size : _HEAD.size + length]
    if magic != MAGIC or len(body) != length or zlib.crc32(body) != crc:
        raise bad
    try:
        plan = json.loads(zlib.decompress(body))
    except (ValueError, zlib.error) as exc:
        raise bad from exc
    if not isinstance(plan, dict):
        raise bad
    return plan


def clear(pin_dir: str) -> None:
    """Unpin the journal: the ``up`` is done, or undone."""
    try:
        os.unlink(os.path.join(pin_dir, PIN))
    except FileNotFoundError:
        pass
