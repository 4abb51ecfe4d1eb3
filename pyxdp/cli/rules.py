"""The commands of the rule list and the firewall's settings: allow, deny, insert, delete, list, policy
and state (connection state and its timeouts)."""

from __future__ import annotations

from .common import dry_run_spec, open_filter
from .output import emit, plural

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .spec import Args


def cmd_add(args: Args) -> int:
    return _add_rule(args, [args.command, *args.words], None)


def finder(args: Args) -> Any:
    """Looks an application profile up in --app-dir (read when first asked)."""
    from ..model.apps import DEFAULT_APP_DIR, find_profile, read_profiles

    cache: list[dict[str, Any]] = []

    def find(name: str) -> Any:
        if not cache:
            profiles, _warnings = read_profiles(getattr(args, "app_dir", None) or DEFAULT_APP_DIR)
            cache.append(profiles)
        return find_profile(cache[0], name)

    return find


def _add_rule(args: Args, words: list[str], position: int | None) -> int:
    from ..errors import RuleExists
    from ..model.rules import parse_rules, plan_add

    rules = parse_rules(words, finder(args))
    dry = getattr(args, "dry_run", False)
    quiet = getattr(args, "quiet", False)
    with open_filter(args, lock=not dry) as flt:
        current = [r.rule for r in flt.rules()] if dry else []
        for i, rule in enumerate(rules):  # an application profile with several port entries: one rule each
            at = None if position is None else position + i
            if dry:
                plan = plan_add(current, rule, at)
                current = plan.rules
                print(f"dry run: {plan.message(rule)}")
                continue
            try:
                plan = flt.put_rule(rule, at)
            except RuleExists as exc:  # as ufw: not an error, nothing changes
                print(exc)
                continue
            if plan.outcome == "updated":
                print(plan.message(rule))
            elif not quiet:
                print(f"rule {plan.number}: {rule}")
    if dry:
        print("dry run: nothing changed")
    return 0


def cmd_insert(args: Args) -> int:
    return _add_rule(args, args.words, args.position)


def cmd_prepend(args: Args) -> int:
    return _add_rule(args, args.words, 1)


def cmd_delete(args: Args) -> int:
    from ..model.prefix import is_digits
    from ..model.rules import parse_rules
    from ..store.ruleset import plan_delete

    words = list(args.words)
    which: list[Any] = [int(w) for w in words] if all(is_digits(w) for w in words) else parse_rules(words, finder(args))
    if args.dry_run:
        with open_filter(args, lock=False) as flt:
            rules = [r.rule for r in flt.rules()]
        for i in plan_delete(rules, which):
            print(f"dry run: would delete rule {i + 1}: {rules[i]}")
        print("dry run: nothing changed")
        return 0
    with open_filter(args) as flt:
        n = flt.delete_rules(which)
    if all(isinstance(w, int) for w in which):
        print(f"deleted {plural(n, 'rule')}")
    else:
        for w in which:
            print(f"deleted rule: {w}")
    return 0


_FORMS = (None, "numbered", "verbose")


def cmd_list(args: Args) -> int:
    from ..errors import UsageError

    if args.form not in _FORMS:
        raise UsageError(f"bad form {args.form!r}: numbered or verbose")
    with open_filter(args, lock=False) as flt:
        rules = flt.rules()
        sets = flt.sets()
        policy = flt.policy
        if args.form is not None and not args.json:
            from .ufwstatus import ufw_status

            active = any(a.attached for a in flt.interfaces())
            print(ufw_status(active, policy, [r.rule for r in rules], args.form))
            return 0
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


def cmd_reset(args: Args) -> int:
    """ufw's reset: every rule and set gone, the installed defaults back."""
    import sys

    from ..errors import UsageError
    from ..layout import Verdict
    from ..model.rulefile import RuleSetSpec, diff_rulesets
    from ..model.timeouts import default_timeouts, timeouts_by_name

    spec = RuleSetSpec((), {}, Verdict.PASS, established=True, timeouts=timeouts_by_name(default_timeouts()))
    if args.dry_run:
        return dry_run_spec(args, spec, "nothing to reset")
    if not args.force:
        if not sys.stdin.isatty():
            raise UsageError("reset asks first and stdin is not a terminal: use 'reset --force'")
        answer = input("Resetting all rules to installed defaults. Proceed with operation (y|n)? ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Aborted")
            return 0
    with open_filter(args) as flt:
        changes = diff_rulesets(flt.ruleset(), spec)
        flt.apply(spec)
    for line in changes:
        print(line)
    print("reset: no rules, no sets, policy pass, connection state on with the default timeouts")
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
    if args.dry_run:
        with open_filter(args, lock=False) as flt:
            print(f"dry run: policy {flt.policy.label} -> {args.policy}; nothing changed")
        return 0
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
    if args.dry_run:
        with open_filter(args, lock=False) as flt:
            on, timeouts = flt.established, flt.timeouts()
        if args.onoff is not None and (args.onoff == "on") != on:
            print(f"dry run: connection state {args.onoff}")
        for k, v in changes.items():
            if timeouts.get(k) != v:
                print(f"dry run: {k} = {v} s (now {timeouts.get(k)} s)")
        print("dry run: nothing changed")
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
