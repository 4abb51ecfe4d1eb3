"""The kernel's rule for interface names, one check for every layer (the
rule grammar and rule-set files add their own narrower alphabet), and
whether an ``ip netns`` namespace exists."""

from __future__ import annotations

import os

from .errors import UsageError

IFNAME_MAX = 15  # IFNAMSIZ less its NUL


def is_ifname(name: str) -> bool:
    """A name the kernel may give an interface: 1 to 15 characters, no '/', no white space."""
    return 0 < len(name) <= IFNAME_MAX and "/" not in name and not any(c.isspace() for c in name)


def check_ifname(ifname: str) -> None:
    if not is_ifname(ifname):
        raise UsageError(f"bad interface name {ifname!r}")


def netns_exists(name: str) -> bool:
    return "/" not in name and os.path.exists(f"/var/run/netns/{name}")
