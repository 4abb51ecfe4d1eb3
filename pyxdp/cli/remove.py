"""remove: take the filter off every interface and remove its state."""

from __future__ import annotations

from .common import open_filter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .spec import Args


def cmd_remove(args: Args) -> int:
    from ..store.attach import recorded

    with open_filter(args) as flt:
        done: list[str] = []
        for _ in range(len(recorded(flt.state))):  # one record a detach (a stale one too)
            left = sorted(recorded(flt.state).values(), key=lambda a: (a.netns or "", a.ifname))
            if not left:
                break
            a = left[0]
            flt.detach(a.ifname, netns=a.netns, keep=True)
            where = f"{a.ifname}" + (f" (netns {a.netns})" if a.netns else "")
            if where not in done:
                done.append(where)
                print(f"detached from {where}")
        pins = flt.pin_dir
        flt.remove_state()
    print(f"removed the state in {pins}")
    return 0
