"""pyxdp's own files: ``/var/lib/pyxdp/`` (``$PYXDP_RUNTIME_DIR`` names
another directory), beside the operator's ``/etc/pyxdp/``, which pyxdp never
writes.

- ``runtime.toml``: what changed at run time on top of the config file
  (:mod:`pyxdp.model.runtime`): written by :func:`save_runtime` (at stop, by
  a timer), merged by ``up`` when it makes the state (at boot).
- ``applied.json``: the config the last ``up`` applied, and which state it
  applied it to: what :func:`save_runtime` and an ``up`` over running state
  subtract from the running firewall to find what changed at run time (so a
  rule or element the operator took out of the file is not mistaken for one
  added at run time).

Both are written atomically (:func:`pyxdp.safefile.write_file_atomic`): a
crash leaves the old file or the new one."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from .errors import PyxdpError, UsageError
from .model.rulefile import RuleSetSpec, format_ruleset, parse_ruleset
from .model.runtime import RuntimeSpec, extract, format_runtime, merge, parse_runtime

if TYPE_CHECKING:
    from collections.abc import Callable

    from .store.state import State

__all__ = ["DEFAULT_RUNTIME_DIR", "applied_base", "merged_config", "record_applied", "runtime_dir",
           "runtime_path", "save_runtime"]

DEFAULT_RUNTIME_DIR = "/var/lib/pyxdp"
RUNTIME_FILE = "runtime.toml"
APPLIED_FILE = "applied.json"


def runtime_dir() -> str:
    """``$PYXDP_RUNTIME_DIR``, else :data:`DEFAULT_RUNTIME_DIR`."""
    return os.environ.get("PYXDP_RUNTIME_DIR") or DEFAULT_RUNTIME_DIR


def runtime_path() -> str:
    return os.path.join(runtime_dir(), RUNTIME_FILE)


def _identity(st: State) -> list[object]:
    """Which state this is: its pin directory and the kernel's id of a map
    that lives as long as the state (a state made anew has another)."""
    return [os.path.abspath(st.pin_dir), st.map("set_names").id]


def _make_dir() -> str:
    d = runtime_dir()
    if not os.path.isdir(d):
        try:
            os.makedirs(d, 0o700)
        except OSError as exc:
            raise PyxdpError(f"cannot make {d}: {exc.strerror}") from None
    return d


def _write(path: str, text: str) -> None:
    from .safefile import write_file_atomic

    write_file_atomic(path, text, 0o600)


def record_applied(st: State, config: RuleSetSpec, previous: RuleSetSpec | None = None,
                   pending: bool = False) -> None:
    """Record that ``config`` (its firewall; interfaces aside) is what the
    last ``up`` applied to ``st``. ``pending``: the ``up`` is about to apply
    it over ``previous`` (what the record said before); a kill before the
    final record leaves this one, and :func:`applied_base` then takes
    whichever of the two the running firewall holds."""
    path = os.path.join(_make_dir(), APPLIED_FILE)
    doc: dict[str, object] = {"v": 1, "state": _identity(st), "config": format_ruleset(config._replace(interfaces=()))}
    if pending:
        doc["pending"] = True
        doc["previous"] = None if previous is None else format_ruleset(previous._replace(interfaces=()))
    _write(path, json.dumps(doc) + "\n")


def _missing(base: RuleSetSpec, running: RuleSetSpec) -> int:
    """How many of ``base``'s rules and set elements ``running`` lacks (and 1
    for another policy)."""
    n = sum(r not in running.rules for r in base.rules) + (base.policy not in (None, running.policy))
    for name, elements in base.sets.items():
        have = {e.prefix for e in running.sets.get(name, ())}
        n += sum(e.prefix not in have for e in elements)
    return n


def _fit(base: RuleSetSpec, running: RuleSetSpec) -> tuple[int, int]:
    """How well ``running`` is ``base`` plus changes made at run time: what
    ``base`` has that does not run (none, when it is), then what runs that
    ``base`` lacks (fewest: the base that explains most of what runs)."""
    rt = extract(running, base, keep_rules=True)
    return _missing(base, running), sum(len(v) for v in rt.sets.values()) + len(rt.sets) + len(rt.rules)


def applied_base(st: State, running: Callable[[], RuleSetSpec]) -> RuleSetSpec | None:
    """The config the last ``up`` applied to this very state (None: none
    did, or the record is of another state or unreadable). Of a record an
    ``up`` killed part-way left (pending), whichever of the new config and
    the one before the running firewall is (plus changes made at run time):
    the killed ``up`` was done, or the next command undid it. When both
    are, the one that leaves less to runtime (a file that only took things
    out: the one before, undone). ``running()`` reads the firewall."""
    try:
        with open(os.path.join(runtime_dir(), APPLIED_FILE), encoding="utf-8") as fh:
            doc = json.load(fh)
        if not isinstance(doc, dict) or doc.get("v") != 1 or doc.get("state") != _identity(st):
            return None
        new = parse_ruleset(str(doc["config"]), "applied config")
        if not doc.get("pending"):
            return new
        now = running()
        prev = doc.get("previous")
        if prev is None:
            return new if _missing(new, now) == 0 else None
        old = parse_ruleset(str(prev), "applied config")
        return new if _fit(new, now) <= _fit(old, now) else old
    except (OSError, ValueError, KeyError, UsageError):
        return None


def read_runtime() -> RuntimeSpec | None:
    """The runtime file (None: there is none)."""
    path = runtime_path()
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PyxdpError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return parse_runtime(text, path)
    except UsageError as exc:  # pyxdp's own file: not the caller's input
        raise PyxdpError(f"{exc} (move it away to boot without it)") from None


def merged_config(st: State | None, running: Callable[[], RuleSetSpec], config: RuleSetSpec,
                  base: RuleSetSpec | None = None) -> tuple[RuleSetSpec, RuntimeSpec | None, str | None, list[str]]:
    """What ``up`` applies: ``config`` with the runtime on top. Over running
    state (``st``; ``running()`` reads its firewall) the runtime is what
    changed since the last ``up`` of this state (none, when no ``up`` is
    recorded for it: the file then replaces what runs); on fresh state
    (``st`` None) it is the runtime file. Returns the spec, the runtime and
    where it came from (None, None: nowhere), and notes (runtime rules left
    out). ``base``: :func:`applied_base` already read (else it is read here)."""
    if st is not None:
        base = base or applied_base(st, running)
        if base is None:
            return config, None, None, []
        rt = extract(running(), base, config.keep_rules)
        where = "the running firewall"
    else:
        got = read_runtime()
        if got is None:
            return config, None, None, []
        rt, where = got, runtime_path()
    spec, notes = merge(config, rt)
    return spec, rt, where, notes


def save_runtime(st: State, running: RuleSetSpec, config: RuleSetSpec | None, config_name: str,
                 ) -> tuple[RuntimeSpec, str]:
    """Write what changed at run time (``running`` less the config the last
    ``up`` applied; without a record of one, less ``config``, the file as it
    is now; with neither, all of it) to the runtime file. Returns it and the
    file's path."""
    base = applied_base(st, lambda: running) or config or RuleSetSpec()
    rt = extract(running, base, bool(config and config.keep_rules))
    path = os.path.join(_make_dir(), RUNTIME_FILE)
    _write(path, format_runtime(rt, config_name))
    return rt, path

