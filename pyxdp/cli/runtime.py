"""save-runtime: what changed at run time goes to /var/lib/pyxdp (never into the config file)."""

from __future__ import annotations

import sys

from .common import open_filter, pin_dir, read_text
from .output import PROG

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .spec import Args


def cmd_save_runtime(args: Args) -> int:
    from ..errors import NotLoaded, UsageError
    from ..model.rulefile import parse_ruleset
    from ..runtime import runtime_path, save_runtime
    from ..up import config_path

    path = config_path(args.config)
    config = None
    try:
        config = parse_ruleset(read_text(path), path)
    except UsageError as exc:  # the record of the last 'up' is the base; the file as it is now only without one
        print(f"{PROG}: warning: {exc}", file=sys.stderr)
    try:
        flt = open_filter(args, lock=False)
    except NotLoaded:
        print(f"no state in {pin_dir(args)}: nothing saved ({runtime_path()} left as it was)")
        return 0
    with flt:
        rt, out = save_runtime(flt.state, flt.ruleset(), config, path)
    print(f"saved what changed at run time to {out}: {rt.summary()}")
    return 0
