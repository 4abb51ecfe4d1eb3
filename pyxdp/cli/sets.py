"""The commands of named sets: set (add, remove, list, flush, destroy), ban and unban (what fail2ban
runs: kept cheap to import)."""

from __future__ import annotations

import sys

from .common import chain, dry_run_report, open_filter, read_file_prefixes
from .output import emit, plural

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .spec import Args


def _print_members(members: list[Any], as_json: bool) -> None:
    for e in members:
        if as_json:
            emit(e.to_dict())
        else:
            left = "" if e.expires_in is None else f"  expires in {max(0, int(e.expires_in))}s"
            print(f"{str(e.prefix):43} hits {e.hits}{left}")


def _dry_run(args: Args, name: str, add: list[Any] | None = None, remove: list[Any] | None = None,
             clear: bool = False, destroy: bool = False, ban_rule: bool = False) -> int:
    """--dry-run of a set change: what it would do to the running firewall, nothing changed."""
    from ..model.rulefile import Element, diff_rulesets
    from ..model.rules import parse_rule

    with open_filter(args, lock=False) as flt:
        before = flt.ruleset()
    sets = {k: list(v) for k, v in before.sets.items()}
    rules = before.rules
    members = {e.prefix: e for e in sets.get(name, [])}
    for p in add or ():
        members[p] = Element(p)
    for p in remove or ():
        members.pop(p, None)
    if clear:
        members = {}
    sets[name] = list(members.values())
    if destroy:
        del sets[name]
    if ban_rule and not any(name in r.sets() for r in rules):
        rules = (parse_rule(f"deny from @{name}"), *rules)
    changes = diff_rulesets(before, before._replace(rules=rules, sets=sets))
    if add and name in before.sets:
        there = {e.prefix for e in before.sets[name]}
        if any(p in there for p in add):
            changes.append(f"set @{name}: {sum(p in there for p in add)} elements there already (timeout set anew)")
    return dry_run_report(changes, "nothing would change")


def cmd_set(args: Args) -> int:
    from ..errors import UsageError
    from ..model.prefix import parse_prefix, parse_ttl

    op, words = args.op, list(args.words)
    if op == "list":
        with open_filter(args, lock=False) as flt:
            if words:
                members = flt.set_members(words[0])
                _print_members(members, args.json)
                if not members and not args.json:  # on stderr: stdout stays one element a line for scripts
                    print(f"set @{words[0].lstrip('@')} is empty", file=sys.stderr)
                return 0
            sets = flt.sets()
        for st in sets:
            if args.json:
                emit(st.to_dict())
            else:
                print(f"@{st.name:31} {st.n4} IPv4, {st.n6} IPv6 elements")
        if not sets and not args.json:
            print("no sets")
        return 0
    if op not in ("add", "remove", "destroy", "flush"):
        raise UsageError(f"bad set operation {op!r}: add, remove, list, flush or destroy")
    if not words:
        raise UsageError(f"set {op}: name the set")
    name, items = words[0], words[1:]
    if op in ("destroy", "flush"):
        if items or args.file:
            raise UsageError(f"set {op} takes only the set's name")
        if args.dry_run:
            return _dry_run(args, name, clear=True, destroy=op == "destroy")
        with open_filter(args) as flt:
            if op == "destroy":
                flt.set_destroy(name)
                print(f"set @{name} removed")
            else:
                print(f"set @{name}: removed {plural(flt.set_flush(name), 'element')}")
        return 0
    from ..store.sets import KeySet

    if op == "add":
        ttl = parse_ttl(args.ttl) if args.ttl is not None else None
        with _display(args) as disp:
            given = chain([parse_prefix(w) for w in items], args.file, _read_task(disp, args.file), _size(args.file))
            if args.dry_run:
                listed = list(given)
                if not listed:
                    raise UsageError("set add: give prefixes or --file")
                return _dry_run(args, name, add=listed)
            keys = KeySet.of(given)
            if not len(keys):
                raise UsageError("set add: give prefixes or --file")
            with open_filter(args) as flt:
                res = flt.set_add(name, keys, ttl=ttl, progress=disp.task(f"set add @{name}", len(keys)))
        print(f"set @{name}: {plural(res.added, 'new element')}"
              + (f", {res.refreshed} refreshed" if res.refreshed else "") + (f", ttl {ttl}s" if ttl else ""))
    else:
        if args.ttl is not None:
            raise UsageError("--ttl goes with 'set add'")
        prefixes = list(chain([parse_prefix(w) for w in items], args.file))
        if not prefixes:
            raise UsageError("set remove: give prefixes or --file")
        if args.dry_run:
            return _dry_run(args, name, remove=prefixes)
        with open_filter(args) as flt:
            res = flt.set_remove(name, prefixes)
        print(f"set @{name}: removed {plural(res.removed, 'element')}")
    return 0


def _size(path: str | None) -> int:
    if not path:
        return 0
    from .progress import file_size

    return file_size(path)


def _display(args: Args) -> Any:
    """The progress display of a command that may read prefixes from a file:
    without --file nothing is imported (a plain 'ban X' stays as cheap as it
    was); with one, a bar on a terminal for a big file or many elements."""
    if not args.file:
        return _NOBAR
    from .progress import Display, on_terminal

    return Display(on_terminal())


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def task(self, what: str, total: int, unit: str = "", big: int = 0) -> None:
        return None


_NOBAR = _NoBar()


def _read_task(disp: Any, path: str | None) -> Any:
    if not path:
        return None
    from .progress import BIG_FILE

    return disp.task(f"read {path}", _size(path), "B", big=BIG_FILE)


def cmd_ban(args: Args) -> int:
    from ..errors import UsageError
    from ..model.prefix import parse_prefix, parse_ttl
    from ..model.rules import parse_set_name
    from ..store.sets import KeySet

    parse_set_name(args.set)
    ttl = parse_ttl(args.ttl) if args.ttl is not None else None
    with _display(args) as disp:
        given = chain([parse_prefix(w) for w in args.targets], args.file, _read_task(disp, args.file),
                      _size(args.file))
        if args.dry_run:
            listed = list(given)
            if not listed:
                raise UsageError("ban: give addresses or prefixes, or --file")
            return _dry_run(args, args.set, add=listed, ban_rule=True)
        keys = KeySet.of(given)
        if not len(keys):
            raise UsageError("ban: give addresses or prefixes, or --file")
        with open_filter(args) as flt:
            res = flt.ban(keys, ttl=ttl, set=args.set, progress=disp.task(f"ban @{args.set}", len(keys)))
    if res.rule:
        print(f"rule {res.rule}: deny from @{args.set} (inserted: no rule used that set yet)")
    if not args.quiet:
        print(f"banned {plural(res.added, 'new element')} in @{args.set}"
              + (f", {res.refreshed} refreshed" if res.refreshed else "")
              + (f", for {ttl}s" if ttl else ", permanently"))
    return 0


def cmd_unban(args: Args) -> int:
    from ..errors import UsageError
    from ..model.prefix import parse_prefix
    from ..model.rules import parse_set_name

    name = parse_set_name(args.set)
    prefixes = [parse_prefix(w) for w in args.targets]
    if args.file:
        prefixes.extend(read_file_prefixes(args.file))
    if args.all:
        if prefixes:
            raise UsageError("unban --all takes no addresses")
        if args.dry_run:
            return _dry_run(args, name, clear=True)
        with open_filter(args) as flt:
            n = flt.set_flush(name) if name in {s.name for s in flt.sets()} else 0
        if not args.quiet:
            print(f"unbanned {plural(n, 'element')} of @{name}")
        return 0
    if not prefixes:
        raise UsageError("unban: give addresses or prefixes, --file, or --all")
    if args.dry_run:
        return _dry_run(args, name, remove=prefixes)
    with open_filter(args) as flt:
        res = flt.unban(prefixes, set=name)
    for p in res.missing:
        print(f"{p} was not banned in @{name}")
    if not args.quiet:
        print(f"unbanned {plural(res.removed, 'element')} of @{name}")
    return 0
