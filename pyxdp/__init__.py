"""pyxdp: a precompiled XDP packet filter, loaded and managed from Python.

    import pyxdp
    with pyxdp.Filter.open(create=True) as flt:
        flt.deny("203.0.113.0/24", ttl=600)
        flt.allow("203.0.113.7")
        flt.attach("eth1")

Nothing is compiled at run time: the CO-RE object ships in this package and
libbpf (libbpf.so.1) loads it through cffi."""

from __future__ import annotations

from ._record import TYPE_CHECKING

__version__ = "0.1.0"

# Lazy attributes keep `import pyxdp` cheap (a CLI call that changes one map
# entry must not pay for pyroute2).
_EXPORTS = {
    "Filter": "filter", "Config": "filter", "EntryState": "filter", "Stats": "filter", "StatLine": "filter",
    "Event": "filter", "Attachment": "filter", "ReplayResult": "filter", "Tracer": "filter",
    "DEFAULT_PIN_DIR": "filter",
    "Entry": "entries", "Prefix": "entries", "Port": "entries", "parse_prefix": "entries",
    "parse_port": "entries", "parse_ttl": "entries",
    "Action": "layout", "Verdict": "layout", "Reason": "layout",
    "XdpMode": "xdp",
    "BpfObject": "bpf", "Map": "bpf", "Program": "bpf", "RingBuffer": "bpf",
    "PyxdpError": "errors", "UsageError": "errors", "BpfError": "errors", "VerifierError": "errors",
    "KeyNotFound": "errors", "MapFull": "errors", "IncompatibleMap": "errors", "NotLoaded": "errors",
    "AttachError": "errors", "LibbpfMissing": "errors",
    "load_object": "generic", "unload": "generic",
    "Rule": "rules", "parse_rule": "rules", "RuleState": "ruleset", "SetState": "ruleset",
    "RuleSetSpec": "ruleset",
}

__all__ = [
    "Action",
    "AttachError",
    "Attachment",
    "BpfError",
    "BpfObject",
    "Config",
    "DEFAULT_PIN_DIR",
    "Entry",
    "EntryState",
    "Event",
    "Filter",
    "IncompatibleMap",
    "KeyNotFound",
    "LibbpfMissing",
    "Map",
    "MapFull",
    "NotLoaded",
    "Port",
    "Prefix",
    "Program",
    "PyxdpError",
    "Reason",
    "ReplayResult",
    "RingBuffer",
    "Rule",
    "RuleSetSpec",
    "RuleState",
    "SetState",
    "StatLine",
    "Stats",
    "Tracer",
    "UsageError",
    "Verdict",
    "VerifierError",
    "XdpMode",
    "load_object",
    "parse_port",
    "parse_prefix",
    "parse_rule",
    "parse_ttl",
    "unload",
]

if TYPE_CHECKING:
    from typing import Any

    from .bpf import BpfObject, Map, Program, RingBuffer
    from .entries import Entry, Port, Prefix, parse_port, parse_prefix, parse_ttl
    from .errors import (
        AttachError,
        BpfError,
        IncompatibleMap,
        KeyNotFound,
        LibbpfMissing,
        MapFull,
        NotLoaded,
        PyxdpError,
        UsageError,
        VerifierError,
    )
    from .filter import (
        DEFAULT_PIN_DIR,
        Attachment,
        Config,
        EntryState,
        Event,
        Filter,
        ReplayResult,
        StatLine,
        Stats,
        Tracer,
    )
    from .generic import load_object, unload
    from .layout import Action, Reason, Verdict
    from .rules import Rule, parse_rule
    from .ruleset import RuleSetSpec, RuleState, SetState
    from .xdp import XdpMode


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'pyxdp' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value
