"""Addresses and prefixes as users type them (``203.0.113.0/24``,
``2001:db8::/32``, a bare address), time-to-live values, and prefix files.
Pure Python: no root, no libbpf, so every check here is unit-tested without
a kernel."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import NamedTuple

from ..errors import UsageError

MAX_TTL = 100 * 365 * 86400  # longer TTLs are clamped to this (about 100 years)
MAX_ECHO = 80  # characters of a bad input line quoted back in an error


class Prefix(NamedTuple):
    """``family`` 4 or 6, ``addr`` in network order with the host bits zero,
    ``plen`` the prefix length."""

    family: int
    addr: bytes
    plen: int

    def __str__(self) -> str:
        af = AF_INET if self.family == 4 else AF_INET6
        return f"{inet_ntop(af, self.addr)}/{self.plen}"

    @property
    def maxlen(self) -> int:
        return 32 if self.family == 4 else 128

    def holds(self, addr: bytes) -> bool:
        """Whether the address ``addr`` (of this family) lies in the prefix."""
        masks = MASKS4 if self.family == 4 else MASKS6
        return len(addr) == len(self.addr) and bytes(a & b for a, b in zip(addr, masks[self.plen])) == self.addr

    def truncate(self, plen: int) -> Prefix:
        masks = MASKS4 if self.family == 4 else MASKS6
        return Prefix(self.family, bytes(a & b for a, b in zip(self.addr, masks[plen])), plen)


def _mask_bytes(plen: int, nbytes: int) -> bytes:
    bits = nbytes * 8
    return (((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)).to_bytes(nbytes, "big")


MASKS4 = [_mask_bytes(n, 4) for n in range(33)]
MASKS6 = [_mask_bytes(n, 16) for n in range(129)]


def quote(text: str) -> str:
    """``text`` for an error message: repr'd, cut to MAX_ECHO characters."""
    return repr(text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "...")


def is_digits(text: str) -> bool:
    """ASCII digits only (str.isdigit also takes '²' and '٢')."""
    return text.isascii() and text.isdigit()


def parse_prefix(text: str) -> Prefix:
    """``203.0.113.0/24``, ``2001:db8::/32`` or a bare address (a host
    prefix). Host bits must be zero: ``10.0.0.1/8`` is refused, not guessed.
    IPv4-mapped IPv6 addresses (``::ffff:192.0.2.9``) are refused: packets
    carry IPv4 addresses as IPv4, so write ``192.0.2.9``."""
    if text.startswith("-"):  # an option that reached the addresses (after '--', from a script or fail2ban)
        raise UsageError(f"bad address {quote(text)}: an address never starts with '-'")
    addr, slash, plen_s = text.partition("/")
    if not text.isascii() or not addr:
        raise UsageError(f"bad address {quote(text)}: not an IPv4 or IPv6 address or prefix")
    if ":" in addr:
        family, af, nbytes = 6, AF_INET6, 16
    else:
        family, af, nbytes = 4, AF_INET, 4
    try:
        raw = inet_pton(af, addr)
    except (OSError, ValueError):
        raise UsageError(f"bad address {quote(text)}: not an IPv4 or IPv6 address or prefix") from None
    if family == 4 and addr.count(".") != 3:
        raise UsageError(f"bad address {quote(text)}: not an IPv4 or IPv6 address or prefix")
    if family == 6 and raw[:12] == b"\0" * 10 + b"\xff\xff":
        v4 = inet_ntop(AF_INET, raw[12:])
        raise UsageError(f"{quote(text)} is an IPv4-mapped IPv6 address: write the IPv4 address ({v4})")
    maxlen = nbytes * 8
    if slash:
        if not is_digits(plen_s) or len(plen_s) > 3 or int(plen_s) > maxlen:
            raise UsageError(f"bad prefix length in {quote(text)}: IPv{family} takes 0 to {maxlen}")
        plen = int(plen_s)
    else:
        plen = maxlen
    if plen < maxlen:
        value = int.from_bytes(raw, "big")
        if value & ((1 << (maxlen - plen)) - 1):
            net = inet_ntop(af, (value >> (maxlen - plen) << (maxlen - plen)).to_bytes(nbytes, "big"))
            raise UsageError(f"{text} has host bits set (did you mean {net}/{plen}?)")
    return Prefix(family, raw, plen)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """Seconds, or a number with s/m/h/d. 0 means no timeout (permanent);
    more than MAX_TTL is clamped to it."""
    t = text.strip()
    unit = _UNITS.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in _UNITS else t
    if not is_digits(num) or len(num) > 30:
        raise UsageError(f"bad ttl {quote(text)}: give seconds, or a number with s, m, h or d (0: permanent)")
    return min(int(num) * unit, MAX_TTL)


def check_ttl(ttl: float | None) -> int | None:
    """A TTL given through the API: None or 0 means permanent, a negative one
    is refused, a longer one than MAX_TTL is clamped to it."""
    if not ttl:
        return None
    if ttl < 0:
        raise UsageError(f"bad ttl {ttl}: seconds from 1 up (0 or None: permanent)")
    return min(int(ttl), MAX_TTL)


def read_prefix_lines(lines: Iterable[str], source: str = "input") -> Iterator[Prefix]:
    """Prefixes one per line; blank lines and ``#`` comments skipped. An error
    names the line (and quotes at most MAX_ECHO characters of it)."""
    for num, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            yield parse_prefix(text)
        except UsageError as exc:
            raise UsageError(f"{source} line {num}: {exc}") from None
