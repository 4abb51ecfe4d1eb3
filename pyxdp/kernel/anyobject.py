"""Any precompiled XDP object, not only the shipped filter: attach it, take it
off, and stream its ``bpf_printk`` output. This is the seed article's bcc
scenario (print "got a packet" for every packet on lo) without a compiler."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator

from ..errors import AttachError, UsageError
from ..model.modes import XdpMode
from .bpf import BpfObject, Program
from .bpffs import require_privileges, system_tool
from .xdp import Netlink

BPF_PROG_TYPE_XDP = 6
TRACEFS = "/sys/kernel/tracing"
FILTER_PROG_NAMES = ("xdp_filter", "xdp_filter_fast")  # the general program and the one with fast paths


def load_object(path: str, ifname: str, program: str | None = None, mode: XdpMode = XdpMode.AUTO,
                netns: str | None = None, force: bool = False) -> tuple[int, XdpMode]:
    """Load ``path`` (its maps unpinned: they live as long as the program) and
    attach its XDP program to ``ifname``. Returns (program id, mode used)."""
    require_privileges()
    with Netlink(netns) as nl:
        nl.ifindex(ifname)  # a bad interface fails before anything is loaded
        with BpfObject(path) as obj:
            for name in obj.map_names:  # nothing pinned: the maps live as long as the program
                obj.private_map(name)
            if program:
                obj.only_program(program)
            obj.load()
            with obj.program(program) as prog:
                if prog.info().type != BPF_PROG_TYPE_XDP:
                    raise UsageError(f"{path}: program {prog.name} is not an XDP program")
                used = nl.attach(ifname, prog.fd, mode, force=force)
                return prog.id, used


def unload(ifname: str, netns: str | None = None) -> int:
    """Detach the XDP program on ``ifname`` that ``load_object`` put there.
    Refuses the pyxdp filter (``detach`` keeps its state right). Returns the
    id of the program taken off."""
    require_privileges()
    with Netlink(netns) as nl:
        st = nl.state(ifname)
        if not st.prog_id or st.mode is None:
            raise UsageError(f"{ifname} runs no XDP program")
        with Program.from_id(st.prog_id) as prog:
            if prog.name in FILTER_PROG_NAMES:
                raise UsageError(f"{ifname} runs the pyxdp filter: use 'pyxdp-load detach {ifname}'")
            nl.detach(ifname, st.mode, expected_fd=prog.fd)
        return st.prog_id


def trace_pipe(root: str = TRACEFS) -> Iterator[str]:
    """Lines of the kernel's trace pipe (bpf_printk output), mounting tracefs
    when it is not mounted."""
    pipe = os.path.join(root, "trace_pipe")
    if not os.path.exists(pipe):
        res = subprocess.run([system_tool("mount"), "-t", "tracefs", "nodev", root], capture_output=True, text=True,
                             check=False)
        if res.returncode != 0 or not os.path.exists(pipe):
            raise AttachError(errno.ENODEV, f"cannot mount tracefs at {root}: {res.stderr.strip() or 'no trace_pipe'}")
    with open(pipe, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            yield line.rstrip("\n")
