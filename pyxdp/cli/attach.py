"""The commands that put programs on interfaces and read what runs where: attach, detach, status, and
load, unload and printk for any precompiled object."""

from __future__ import annotations

import os

from .common import open_filter, pin_dir
from .output import emit, plural

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .spec import Args


def cmd_attach(args: Args) -> int:
    from ..model.modes import XdpMode

    mode = XdpMode.parse(args.mode)
    with open_filter(args, create=True, with_program=True, migrate=args.reload, force=args.force) as flt:
        a = flt.attach(args.iface, mode=mode, netns=args.netns, force=args.force, reload=args.reload)
    where = f" (netns {a.netns})" if a.netns else ""
    print(f"attached to {a.ifname}{where}: {a.mode} mode, program id {a.prog_id}")
    return 0


def cmd_detach(args: Args) -> int:
    with open_filter(args) as flt:
        removed = flt.detach(args.iface, netns=args.netns, keep=args.keep)
    print(f"detached from {args.iface}" + ("; no interface left, state removed" if removed else ""))
    return 0


def cmd_status(args: Args) -> int:
    from ..errors import NotLoaded, UnreadableState, UsageError

    if args.form not in (None, "numbered", "verbose"):
        raise UsageError(f"bad form {args.form!r}: numbered or verbose")

    try:
        flt = open_filter(args, lock=False)
    except UnreadableState as exc:
        if args.json:
            emit({"pin_dir": pin_dir(args), "loaded": False, "unreadable": str(exc), "running": exc.running,
                   "interfaces": []})
        else:
            print(f"unreadable: {exc}")
        return 1
    except NotLoaded:
        if args.json:
            emit({"pin_dir": pin_dir(args), "loaded": False, "interfaces": []})
        else:
            print(f"not loaded ({pin_dir(args)} holds no state)")
        return 1
    with flt:
        ifaces = flt.interfaces()
        cfg = flt.config()
        sets = flt.sets()
        if args.form is not None and not args.json:
            from .ufwstatus import ufw_status

            print(ufw_status(any(a.attached for a in ifaces), cfg.policy, [r.rule for r in flt.rules()], args.form))
            return 0
        shape = flt.shape()
        if args.json:
            emit({"pin_dir": flt.pin_dir, "loaded": True, "policy": cfg.policy.label,
                   "rules": cfg.nrules, "rule_capacity": flt.rule_capacity, "set_capacity": flt.capacity,
                   "sets": [s.to_dict() for s in sets], "trace_every": cfg.trace_every,
                   "established": cfg.established, "flow_capacity": flt.state.flow_capacity,
                   "shape": shape.to_dict(), "interfaces": [a.to_dict() for a in ifaces]})
            return 0
        elements = sum(s.n4 + s.n6 for s in sets)
        print(f"state: {flt.pin_dir}  policy: {cfg.policy.label}  rules: {cfg.nrules}/{flt.rule_capacity}  "
              f"sets: {len(sets)} ({plural(elements, 'element')}; {flt.capacity} per family)  "
              f"connection state: {'on' if cfg.established else 'off'} (up to {flt.state.flow_capacity} flows)")
        if cfg.trace_every:
            print(f"tracing is on (1 in {cfg.trace_every} packets): a 'trace' is running, or one was killed "
                  "(the next 'pyxdp-load trace' turns it off when it ends)")
        if shape.running is not None:
            from ..model.shapes import FAST, describe

            left = describe(shape.running) if shape.running & ~FAST else "nothing" + describe(shape.running)[7:]
            print(f"program shape: leaves out {left}"
                  + ("" if shape.settled else "; a replacement was cut short: the next change finishes it"))
        if not ifaces:
            print("no interface attached")
        for a in ifaces:
            ns = f" netns {a.netns}" if a.netns else ""
            cmd = f"{a.ifname}" + (f" --netns {a.netns}" if a.netns else "")
            if a.attached and a.recorded_prog_id:
                state = (f"  (the record says program {a.recorded_prog_id}: a writer was killed part-way; "
                         f"'pyxdp-load attach {cmd}' records what runs)")
            elif a.attached:
                state = ""
            elif a.interrupted:
                state = (f"  (NOT attached: a change of it was killed part-way; 'pyxdp-load attach {cmd}' attaches "
                         f"it, 'pyxdp-load detach {cmd}' forgets it)")
            else:
                state = "  (NOT attached any more)"
            print(f"  {a.ifname} (ifindex {a.ifindex}{ns}): {a.mode}, program id {a.prog_id}{state}")
        rules = [r.rule for r in flt.rules()]
        if rules:  # the rules as 'ufw status' shows them
            from .ufwstatus import ufw_status

            print("\n".join(ufw_status(True, cfg.policy, rules, None).splitlines()[1:]))
    return 0


def cmd_load(args: Args) -> int:
    from ..kernel.anyobject import load_object
    from ..model.modes import XdpMode

    prog_id, mode = load_object(args.object, args.iface, program=args.program, mode=XdpMode.parse(args.mode),
                                netns=args.netns, force=args.force)
    print(f"loaded {os.path.basename(args.object)} on {args.iface}: {mode.value} mode, program id {prog_id}")
    return 0


def cmd_unload(args: Args) -> int:
    from ..kernel.anyobject import unload

    prog_id = unload(args.iface, netns=args.netns)
    print(f"unloaded program {prog_id} from {args.iface}")
    return 0


def cmd_printk(args: Args) -> int:
    from ..kernel.anyobject import trace_pipe

    for n, line in enumerate(trace_pipe(), 1):
        print(line, flush=True)
        if args.count is not None and n >= args.count:
            break
    return 0
