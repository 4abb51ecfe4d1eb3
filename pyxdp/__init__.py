"""pyxdp: a precompiled XDP packet filter, loaded and managed from Python.

    import pyxdp
    with pyxdp.Filter.open(create=True) as flt:
        flt.add_rule("allow proto tcp from 192.0.2.0/24 to any port 22")
        flt.add_rule("deny 22/tcp")
        flt.ban(["203.0.113.7"], ttl=600)
        flt.attach("eth1")

Nothing is compiled at run time: the CO-RE object ships in this package and
libbpf (libbpf.so.1) loads it through cffi."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.3.0"  # the package's version (pyproject reads it from here); 0.3 uses state layout 4

# Lazy attributes keep `import pyxdp` cheap (a CLI call that changes one map
# element must not pay for pyroute2).
_EXPORTS = {
    "Filter": "filter", "BanResult": "filter",
    "Config": "store.state", "DEFAULT_PIN_DIR": "store.state",
    "Stats": "observe", "StatLine": "observe", "Event": "observe", "Tracer": "observe", "TraceFilter": "observe",
    "ReplayResult": "replay", "Tester": "replay",
    "Attachment": "store.attach",
    "Prefix": "model.prefix", "parse_prefix": "model.prefix", "parse_ttl": "model.prefix",
    "Rule": "model.rules", "Addr": "model.rules", "parse_rule": "model.rules", "parse_rule_words": "model.rules",
    "parse_rules": "model.rules",
    "RuleSetSpec": "model.rulefile", "Element": "model.rulefile", "parse_ruleset": "model.rulefile",
    "format_ruleset": "model.rulefile",
    "InterfaceSpec": "model.rulefile", "ConfigChange": "up",
    "RuleState": "store.ruleset",
    "SetState": "store.sets", "ElementState": "store.sets", "ChangeResult": "store.sets",
    "Action": "layout", "Verdict": "layout", "Reason": "layout", "FlowState": "layout",
    "Flow": "store.flows",
    "XdpMode": "model.modes",
    "BpfObject": "kernel.bpf", "Map": "kernel.bpf", "Program": "kernel.bpf", "RingBuffer": "kernel.bpf",
    "PyxdpError": "errors", "UsageError": "errors", "BpfError": "errors", "BpfPermissionError": "errors",
    "VerifierError": "errors", "KeyNotFound": "errors", "MapFull": "errors", "IncompatibleMap": "errors",
    "NotLoaded": "errors", "AttachError": "errors", "LibbpfMissing": "errors", "UnsafeState": "errors",
    "LockTimeout": "errors", "NotPrivileged": "errors", "RuleExists": "errors",
    "load_object": "kernel.anyobject", "unload": "kernel.anyobject",
}

__all__ = [
    "Action",
    "Addr",
    "AttachError",
    "Attachment",
    "BanResult",
    "BpfError",
    "BpfObject",
    "BpfPermissionError",
    "ChangeResult",
    "Config",
    "ConfigChange",
    "DEFAULT_PIN_DIR",
    "Element",
    "ElementState",
    "Event",
    "Filter",
    "Flow",
    "FlowState",
    "IncompatibleMap",
    "InterfaceSpec",
    "KeyNotFound",
    "LibbpfMissing",
    "LockTimeout",
    "Map",
    "MapFull",
    "NotLoaded",
    "NotPrivileged",
    "Prefix",
    "Program",
    "PyxdpError",
    "Reason",
    "ReplayResult",
    "RingBuffer",
    "Rule",
    "RuleExists",
    "RuleSetSpec",
    "RuleState",
    "SetState",
    "StatLine",
    "Stats",
    "Tester",
    "TraceFilter",
    "Tracer",
    "UnsafeState",
    "UsageError",
    "Verdict",
    "VerifierError",
    "XdpMode",
    "format_ruleset",
    "load_object",
    "parse_prefix",
    "parse_rule",
    "parse_rule_words",
    "parse_rules",
    "parse_ruleset",
    "parse_ttl",
    "unload",
]

if TYPE_CHECKING:
    from .errors import (
        AttachError,
        BpfError,
        BpfPermissionError,
        IncompatibleMap,
        KeyNotFound,
        LibbpfMissing,
        LockTimeout,
        MapFull,
        NotLoaded,
        NotPrivileged,
        PyxdpError,
        RuleExists,
        UnsafeState,
        UsageError,
        VerifierError,
    )
    from .filter import BanResult, Filter
    from .kernel.anyobject import load_object, unload
    from .kernel.bpf import BpfObject, Map, Program, RingBuffer
    from .layout import Action, FlowState, Reason, Verdict
    from .model.modes import XdpMode
    from .model.prefix import Prefix, parse_prefix, parse_ttl
    from .model.rulefile import Element, InterfaceSpec, RuleSetSpec, format_ruleset, parse_ruleset
    from .model.rules import Addr, Rule, parse_rule, parse_rule_words, parse_rules
    from .observe import Event, StatLine, Stats, TraceFilter, Tracer
    from .replay import ReplayResult, Tester
    from .store.attach import Attachment
    from .store.flows import Flow
    from .store.ruleset import RuleState
    from .store.sets import ChangeResult, ElementState, SetState
    from .store.state import DEFAULT_PIN_DIR, Config
    from .up import ConfigChange


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'pyxdp' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value
