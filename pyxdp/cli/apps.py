"""``app list`` and ``app info NAME``: ufw's application profiles, as ufw
shows them."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .spec import Args


def cmd_app(args: Args) -> int:
    from ..errors import UsageError
    from ..model.apps import DEFAULT_APP_DIR, find_profile, read_profiles

    if args.op not in ("list", "info"):
        raise UsageError(f"bad app command {args.op!r}: list or info NAME")
    profiles, warnings = read_profiles(args.app_dir or DEFAULT_APP_DIR)
    for w in warnings:
        print(f"WARN: {w}", file=sys.stderr)
    if args.op == "list":
        if args.name is not None:
            raise UsageError("'app list' takes no name")
        print("Available applications:")
        for name in sorted(profiles, key=str.lower):
            print(f"  {name}")
        return 0
    if args.name is None:
        raise UsageError("'app info' needs a profile name ('app info all' for every one)")
    if args.name == "all":
        print("\n--\n\n".join(p.info() for _n, p in sorted(profiles.items(), key=lambda kv: kv[0].lower())))
        return 0
    print(find_profile(profiles, args.name).info())
    return 0
