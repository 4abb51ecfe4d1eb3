"""The commands of the rule list and the firewall's settings: allow, deny, insert, delete, list, policy
and state (connection state and its timeouts)."""

from __future__ import annotations

from .common import open_filter
from .output import emit, plural

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .spec import Args


def cmd_add(args: Args) -> int:
    return _add_rule(args, [args.command, *args.words], None)


def _add_rule(args: Args, words: list[str], position: int | None) -> int:
    from ..errors import RuleExists
    from ..model.rules import parse_rule_words

    rule = parse_rule_words(words)
    with open_filter(args) as flt:
        try:
            num = flt.add_rule(rule, position)
        except RuleExists as exc:  # as ufw: not an error, nothing changes
            print(f"Skipping adding existing rule (number {exc.number}): {rule}")
            return 0
    if not getattr(args, "quiet", False):
        print(f"rule {num}: {rule}")
    return 0


def cmd_insert(args: Args) -> int:
    return _add_rule(args, args.words, args.position)


def cmd_delete(args: Args) -> int:
    from ..model.prefix import is_digits
    from ..model.rules import parse_rule_words

    words = list(args.words)
    if all(is_digits(w) for w in words):
        with open_filter(args) as flt:
            n = flt.delete_rules([int(w) for w in words])
        print(f"deleted {plural(n, 'rule')}")
        return 0
    rule = parse_rule_words(words)
    with open_filter(args) as flt:
        flt.delete_rules([rule])
    print(f"deleted rule: {rule}")
    return 0


def cmd_list(args: Args) -> int:
    with open_filter(args, lock=False) as flt:
        rules = flt.rules()
        sets = flt.sets()
        policy = flt.policy
    if args.json:
        for r in rules:
            emit(r.to_dict())
        for st in sets:
            emit({"set": st.name, "ipv4": st.n4, "ipv6": st.n6})
        return 0
    print(f"policy {policy.label}; rules in order, the first that matches decides:")
    if not rules:
        print("  (no rules)")
    for r in rules:
        print(f"{r.number:5}  {str(r.rule):60} hits {r.packets}")
    for st in sets:
        print(f"set @{st.name}: {plural(st.n4 + st.n6, 'element')} ('pyxdp-load set list {st.name}')")
    return 0


def cmd_policy(args: Args) -> int:
    from ..errors import UsageError
    from ..layout import Verdict

    if args.policy is None:
        with open_filter(args, lock=False) as flt:
            print(flt.policy.label)
        return 0
    if args.policy not in ("pass", "drop"):
        raise UsageError(f"bad policy {args.policy!r}: pass or drop")
    with open_filter(args) as flt:
        flt.set_policy(Verdict[args.policy.upper()])
    print(f"policy: {args.policy}")
    return 0


def cmd_state(args: Args) -> int:
    from ..errors import UsageError
    from ..model.timeouts import parse_timeout_args

    if args.onoff not in (None, "on", "off"):
        raise UsageError(f"bad state {args.onoff!r}: on or off")
    changes = parse_timeout_args(args.timeout or [])
    if args.onoff is None and not changes:
        with open_filter(args, lock=False) as flt:
            on, timeouts = flt.established, flt.timeouts()
        if args.json:
            emit({"established": on, "timeouts": timeouts})
        else:
            print(f"connection state: {'on' if on else 'off'}")
            for name, secs in timeouts.items():
                print(f"  {name:16}{secs:>8} s")
        return 0
    with open_filter(args) as flt:
        if changes:
            flt.set_timeouts(changes)
        if args.onoff is not None:
            flt.set_established(args.onoff == "on")
        on = flt.established
    done = [f"connection state: {'on' if on else 'off'}"] + [f"{k} = {v} s" for k, v in changes.items()]
    print("; ".join(done))
    return 0
