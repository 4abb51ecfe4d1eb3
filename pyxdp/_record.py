"""``Record``: typing.NamedTuple's class syntax without importing typing.

Importing typing costs 4-5 ms, a sixth of a whole ``pyxdp-load deny from X``
(the call fail2ban makes per ban). Type checkers see typing.NamedTuple; at run
time a class body with annotated fields becomes a collections.namedtuple
subclass with the body's methods, and the same behaviour: immutable, ordered,
hashable, field defaults."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple as Record
else:
    from collections import namedtuple

    class _RecordMeta(type):
        def __new__(mcs, name, bases, ns):  # noqa: N804
            if ns.get("_record_root"):
                return super().__new__(mcs, name, bases, ns)
            fields = list(ns.get("__annotations__", {}))
            defaults = [ns[f] for f in fields if f in ns]
            base = namedtuple(name, fields, defaults=defaults or None, module=ns.get("__module__"))
            body = {k: v for k, v in ns.items() if k not in fields and k != "__annotations__"}
            body["__slots__"] = ()
            return type(name, (base,), body)

    class Record(metaclass=_RecordMeta):
        _record_root = True

__all__ = ["Record", "TYPE_CHECKING"]
