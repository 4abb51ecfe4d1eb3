"""``resize`` killed (SIGKILL) after its Nth map write, for every kill
point of its run: the next command (a ban of an unrelated address)
undoes a resize killed before its switch and finishes one killed after it.
Either way the state holds the firewall it held, with the old capacities or
the new ones whole (every map of a kind the same size, the layout record
agreeing), nothing of the resize left (journal, temporary pins), and the
interface runs the program pinned in the state, on the state's maps."""

from __future__ import annotations

import json
import os
import subprocess

from helpers.env import NetPair, needs_root

from .test_migrate import BIN, TREE, _env, map_id, ok, pinned_id, xdp_prog
from .test_resize import make_state

pytestmark = needs_root
UNRELATED = "203.0.113.250"


def firewall(save: str) -> tuple[object, ...]:
    """Rules, policy and set members of a save (the TTLs run on)."""
    from pyxdp.model.rulefile import parse_ruleset

    spec = parse_ruleset(save, "save")
    return spec.rules, spec.policy, {n: sorted(str(e.prefix) for e in v) for n, v in spec.sets.items()}


def run_killed(pin: str, n: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN, "--pin-dir", pin, *args], capture_output=True, text=True, env=_env(TREE, n),
                          timeout=120)


def writes_of_a_resize(pin: str) -> int:
    """How many map writes a whole resize (rules 1024 -> 2048) makes: kill points past it do not kill."""
    n = 1
    while True:
        r = run_killed(pin, n, "resize", "--rules", "2048")
        if r.returncode == 0:
            ok(pin, "resize", "--rules", "1024")
            return n
        n *= 2


def test_resize_killed(pin_dir: str, netpair: NetPair) -> None:
    from pyxdp.kernel.bpf import Map, Program

    make_state(pin_dir, netpair)
    save0 = ok(pin_dir, "save")
    total = writes_of_a_resize(pin_dir)
    problems, outcomes = [], set()
    for n in range(1, total + 1):  # every write (a resize of this state makes about 30)
        before = json.loads(ok(pin_dir, "status", "--json"))["rule_capacity"]
        want = 2048 if before == 1024 else 1024
        r = run_killed(pin_dir, n, "resize", "--rules", str(want), "--capacity", str(1 << 19 if want == 2048 else
                                                                                      1 << 20))
        ok(pin_dir, "ban", "-q", UNRELATED)
        ok(pin_dir, "unban", "-q", UNRELATED)
        st = json.loads(ok(pin_dir, "status", "--json"))
        tag = f"killed after write {n} (rc {r.returncode})"
        outcomes.add("finished" if st["rule_capacity"] == want else "undone")
        if (st["rule_capacity"], st["set_capacity"]) not in ((before, 1 << 20 if before == 1024 else 1 << 19),
                                                             (want, 1 << 19 if want == 2048 else 1 << 20)):
            problems.append(f"{tag}: capacities {st['rule_capacity']}, {st['set_capacity']}")
        if firewall(ok(pin_dir, "save")) != firewall(save0):
            problems.append(f"{tag}: the firewall differs")
        left = [x for x in os.listdir(pin_dir) if x.endswith("_v4") or x.startswith("resize_journal")]
        if left:
            problems.append(f"{tag}: left {left}")
        sizes = set()
        for name in ("elem4", "elem6", "trie4", "trie6"):
            with Map.from_pin(os.path.join(pin_dir, name)) as m:
                sizes.add(m.spec.max_entries)
        if len(sizes) != 1:
            problems.append(f"{tag}: element maps of sizes {sizes}")
        prog = xdp_prog(netpair.b, netpair.vb)
        with Program.from_id(prog) as p:
            uses = set(p.map_ids())
        if prog != pinned_id(pin_dir, "prog") or not {map_id(pin_dir, "rvec"), map_id(pin_dir, "elem4")} <= uses:
            problems.append(f"{tag}: the interface runs program {prog}, not the state's")
    assert not problems, "\n".join(problems)
    assert outcomes == {"finished", "undone"}, outcomes  # kills before the switch and after it
