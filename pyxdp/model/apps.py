"""ufw's application profiles: the INI files in ``/etc/ufw/applications.d``
that packages ship (openssh-server's ``OpenSSH``, apache2's ``Apache Full``),
read the way ufw reads them. Pure Python: no root, no libbpf.

    [OpenSSH]
    title=Secure shell server, an rshd replacement
    description=OpenSSH is a free implementation of the Secure Shell protocol.
    ports=22/tcp

``ports`` is one or more entries separated by ``|``: ``80,443/tcp``,
``60000:61000/udp``, or a single port without a protocol (TCP and UDP)."""

from __future__ import annotations

import configparser
import os
from typing import NamedTuple

from ..errors import UsageError
from .prefix import quote
from .rules import APP_NAME_RE, PortRanges, format_ports, parse_ports

DEFAULT_APP_DIR = "/etc/ufw/applications.d"
MAX_BYTES = 10 * 1024 * 1024  # ufw reads at most this much of the directory
_SKIP_SUFFIXES = (".dpkg-new", ".dpkg-old", ".dpkg-dist", ".rpmnew", ".rpmsave", "~")


class AppProfile(NamedTuple):
    """One profile: its name, title, description and port entries
    (ranges, "tcp" / "udp" / "any")."""

    name: str
    title: str
    description: str
    ports: tuple[tuple[PortRanges, str], ...]
    source: str = ""  # the file it came from
    text: str = ""  # its ports= line

    def port_text(self) -> list[str]:
        """The entries as the profile writes them (``80,443/tcp``)."""
        if self.text:
            return [e.strip() for e in self.text.split("|")]
        return [format_ports(r) + ("" if proto == "any" else f"/{proto}") for r, proto in self.ports]

    def info(self) -> str:
        """``ufw app info NAME``'s text."""
        entries = self.port_text()
        head = "Ports:" if len(entries) > 1 or "," in entries[0] else "Port:"
        return "\n".join([f"Profile: {self.name}", f"Title: {self.title}", f"Description: {self.description}",
                          "", head] + [f"  {e}" for e in entries])


def parse_port_entries(text: str) -> tuple[tuple[PortRanges, str], ...]:
    """``22/tcp|80,443/tcp|53``: each a port, range or list with /tcp or
    /udp, or one port alone (TCP and UDP), as ufw allows in a profile."""
    out = []
    for entry in text.split("|"):
        ports, slash, proto = entry.strip().partition("/")
        if slash and proto not in ("tcp", "udp"):
            raise UsageError(f"bad protocol in {quote(entry)}")
        ranges = parse_ports(ports)
        if any(lo == 0 for lo, _hi in ranges):
            raise UsageError(f"bad port in {quote(entry)}: ports are 1 to 65535")
        if not slash and (len(ranges) > 1 or ranges[0][0] != ranges[0][1]):
            raise UsageError(f"{quote(entry)}: a list or range needs /tcp or /udp")
        out.append((ranges, proto or "any"))
    return tuple(out)


def read_profiles(app_dir: str = DEFAULT_APP_DIR) -> tuple[dict[str, AppProfile], list[str]]:
    """The profiles of every file in ``app_dir`` (in name order; a later
    profile of the same name wins, as in ufw) and a warning per file or
    profile skipped. A missing directory holds no profiles."""
    profiles: dict[str, AppProfile] = {}
    warnings: list[str] = []
    try:
        names = sorted(os.listdir(app_dir))
    except FileNotFoundError:
        return profiles, warnings
    except OSError as exc:
        raise UsageError(f"cannot read the application profiles in {app_dir}: {exc.strerror}") from None
    total = 0
    for fname in names:
        path = os.path.join(app_dir, fname)
        if fname.startswith(".") or fname.endswith(_SKIP_SUFFIXES) or not os.path.isfile(path):
            continue
        size = os.path.getsize(path)
        if total + size > MAX_BYTES:
            warnings.append(f"Skipping '{fname}': too big")
            continue
        total += size
        parser = configparser.RawConfigParser(interpolation=None)
        try:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f, path)
        except (OSError, UnicodeDecodeError, configparser.Error):
            warnings.append(f"Skipping '{fname}': couldn't process")
            continue
        for name in parser.sections():
            fields = dict(parser.items(name))
            problem = _check(name, fields)
            if problem:
                warnings.append(problem)
                continue
            try:
                ports = parse_port_entries(fields["ports"])
            except UsageError:
                warnings.append(f"Invalid ports in profile '{name}'")
                continue
            if name in profiles:
                warnings.append(f"Duplicate profile '{name}', using last found")
            profiles[name] = AppProfile(name, fields["title"], fields["description"], ports, path, fields["ports"])
    return profiles, warnings


def _check(name: str, fields: dict[str, str]) -> str | None:
    if not APP_NAME_RE.match(name) or name == "all" or name.isdigit():
        return f"Skipping '{name}': invalid name"
    for key in ("title", "description", "ports"):
        if key not in fields:
            return f"Profile '{name}' missing required field '{key}'"
        if not fields[key]:
            return f"Profile '{name}' has empty required field '{key}'"
    if any(len(v) > 1024 for v in fields.values()):
        return f"Skipping '{name}': value too long"
    return None


def find_profile(profiles: dict[str, AppProfile], name: str) -> AppProfile:
    """The profile ``name`` names: exactly, else the one that differs only in
    case (ufw's lookup)."""
    if name in profiles:
        return profiles[name]
    near = [p for n, p in profiles.items() if n.lower() == name.lower()]
    if len(near) == 1:
        return near[0]
    if near:
        raise UsageError(f"Found multiple matches for '{name}'. Please use exact profile name")
    raise UsageError(f"Could not find a profile matching '{name}'")
