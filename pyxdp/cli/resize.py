"""resize: change the rule, set element or flow capacity in place."""

from __future__ import annotations

from .common import open_filter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .spec import Args


def cmd_resize(args: Args) -> int:
    from ..errors import UsageError

    if args.rules is None and args.capacity is None and args.flows is None:
        raise UsageError("resize: give --rules N, --capacity N and/or --flows N")
    with open_filter(args) as flt:
        st = flt.state
        before = (flt.rule_capacity, flt.capacity, st.flow_capacity)
        if not flt.resize(args.rules, args.capacity, args.flows):
            print(f"nothing to change: rules {before[0]}, set elements {before[1]} per family, "
                  f"flows {before[2]} per family")
            return 0
        print(f"resized {flt.pin_dir}: rules {before[0]} -> {flt.rule_capacity}, set elements {before[1]} -> "
              f"{flt.capacity} per family, flows {before[2]} -> {st.flow_capacity} per family")
    return 0
