"""Filter entries: what a user types (``deny from 203.0.113.0/24``,
``allow 22/tcp``), validated and encoded for the maps. Pure Python: no root,
no libbpf, so every check here is unit-tested without a kernel.

The grammar follows ufw. ``parse_entry_words`` reads the words after
``allow``/``deny`` as a token stream: ``[proto P] [from A [A ...]] [to any]
[port N] [N[/P] ...]``. The simple filter takes one field per entry (a
source prefix or a destination port); the full multi-field rule grammar will
extend the same parser."""

from __future__ import annotations

# _socket, not socket: socket.py builds its enums at import (3 ms a CLI call)
from _socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from collections.abc import Iterable, Iterator

from ._record import TYPE_CHECKING, Record
from .errors import UsageError
from .layout import PORT_BASE, Action

PROTOS = ("tcp", "udp")
MAX_TTL = 10 * 365 * 86400


class Prefix(Record):
    """A source prefix: ``family`` 4 or 6, ``addr`` in network order with the
    host bits zero, ``plen`` the prefix length."""

    family: int
    addr: bytes
    plen: int

    def __str__(self) -> str:
        af = AF_INET if self.family == 4 else AF_INET6
        return f"{inet_ntop(af, self.addr)}/{self.plen}"

    @property
    def kind(self) -> str:
        return "src"


class Port(Record):
    """A destination port of one protocol."""

    proto: str
    port: int

    def __str__(self) -> str:
        return f"{self.port}/{self.proto}"

    @property
    def slot(self) -> int:
        """Index in the datapath's ports array."""
        return PORT_BASE[self.proto] + self.port

    @property
    def kind(self) -> str:
        return "port"


if TYPE_CHECKING:
    from typing import Union

    Target = Union[Prefix, Port]


class Entry(Record):
    """One filter entry: a target, what to do with it, and an optional
    time-to-live in seconds."""

    target: Target
    action: Action
    ttl: int | None = None

    def __str__(self) -> str:
        words = [self.action.name.lower(), "from" if isinstance(self.target, Prefix) else "", str(self.target)]
        if self.ttl:
            words.append(f"--ttl {self.ttl}")
        return " ".join(w for w in words if w)


def _mask_bytes(plen: int, nbytes: int) -> bytes:
    bits = nbytes * 8
    return (((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)).to_bytes(nbytes, "big")


MASKS4 = [_mask_bytes(n, 4) for n in range(33)]
MASKS6 = [_mask_bytes(n, 16) for n in range(129)]


def parse_prefix(text: str) -> Prefix:
    """``203.0.113.0/24``, ``2001:db8::/32`` or a bare address (a host
    prefix). Host bits must be zero: ``10.0.0.1/8`` is refused, not guessed."""
    addr, slash, plen_s = text.partition("/")
    if ":" in addr:
        family, af, nbytes = 6, AF_INET6, 16
    else:
        family, af, nbytes = 4, AF_INET, 4
    try:
        raw = inet_pton(af, addr)
    except (OSError, ValueError):
        raise UsageError(f"bad address {text!r}: not an IPv4 or IPv6 address or prefix") from None
    if family == 4 and addr.count(".") != 3:
        raise UsageError(f"bad address {text!r}: not an IPv4 or IPv6 address or prefix")
    maxlen = nbytes * 8
    if slash:
        if not plen_s.isdigit() or len(plen_s) > 3 or int(plen_s) > maxlen:
            raise UsageError(f"bad prefix length in {text!r}: IPv{family} takes 0 to {maxlen}")
        plen = int(plen_s)
    else:
        plen = maxlen
    if plen < maxlen:
        value = int.from_bytes(raw, "big")
        if value & ((1 << (maxlen - plen)) - 1):
            net = inet_ntop(af, (value >> (maxlen - plen) << (maxlen - plen)).to_bytes(nbytes, "big"))
            raise UsageError(f"{text} has host bits set (did you mean {net}/{plen}?)")
    return Prefix(family, raw, plen)


def parse_port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"bad port {text!r}: ports are 1 to 65535")
    return int(text)


def parse_proto(text: str) -> str:
    if text not in PROTOS:
        raise UsageError(f"bad protocol {text!r}: ports take tcp or udp")
    return text


def parse_port(text: str) -> list[Port]:
    """``22/tcp``, ``53/udp``, or ``22`` (both tcp and udp, as ufw does)."""
    num, slash, proto = text.partition("/")
    port = parse_port_number(num)
    if slash:
        return [Port(parse_proto(proto), port)]
    return [Port(p, port) for p in PROTOS]


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """Seconds, or a number with s/m/h/d."""
    t = text.strip()
    unit = _UNITS.get(t[-1:], 1) if t[-1:] in _UNITS else 1
    num = t[:-1] if t[-1:] in _UNITS else t
    if not num.isdigit() or not num.isascii() or len(num) > 12:
        raise UsageError(f"bad ttl {text!r}: give seconds, or a number with s, m, h or d")
    secs = int(num) * unit
    if not 0 < secs <= MAX_TTL:
        raise UsageError(f"bad ttl {text!r}: must be between 1 second and 10 years")
    return secs


class _Tokens:
    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.pos = 0

    def peek(self) -> str | None:
        return self.words[self.pos] if self.pos < len(self.words) else None

    def take(self, what: str) -> str:
        word = self.peek()
        if word is None:
            raise UsageError(f"expected {what} at the end")
        self.pos += 1
        return word


KEYWORDS = ("from", "to", "port", "proto")


def _is_port(word: str) -> bool:
    """``22``, ``22/tcp``: a port spec, not an address."""
    num, _, proto = word.partition("/")
    return num.isdigit() and (not proto or proto.isalpha())


def parse_entry_words(words: list[str]) -> list[Target]:
    """The words after ``allow``/``deny``/``delete ACTION`` -> targets."""
    toks = _Tokens(words)
    proto: str | None = None
    sources: list[Prefix] = []
    ports: list[Port] = []
    dst_port: int | None = None
    while toks.peek() is not None:
        word = toks.take("a word")
        if word == "proto":
            if proto is not None:
                raise UsageError("'proto' given twice")
            proto = parse_proto(toks.take("a protocol after 'proto'"))
        elif word == "from":
            first = toks.take("an address after 'from'")
            if first == "any":
                continue
            sources.append(parse_prefix(first))
            while toks.peek() is not None and toks.peek() not in KEYWORDS and not _is_port(toks.peek() or ""):
                sources.append(parse_prefix(toks.take("an address")))
        elif word == "to":
            dst = toks.take("a destination after 'to'")
            if dst != "any":
                raise UsageError(f"destination {dst!r}: only 'to any' is supported by simple entries")
        elif word == "port":
            if dst_port is not None:
                raise UsageError("'port' given twice: list ports as '22/tcp 23/tcp'")
            dst_port = parse_port_number(toks.take("a port after 'port'"))
        elif _is_port(word):
            ports.extend(parse_port(word))
        else:
            raise UsageError(
                f"unexpected {word!r}: expected 'from ADDRESS', 'PORT[/tcp|udp]' or 'to any port N [proto P]'"
            )
    if dst_port is not None:
        ports.extend([Port(proto, dst_port)] if proto else [Port(p, dst_port) for p in PROTOS])
    elif proto and not ports:
        raise UsageError("'proto' needs a port ('to any port N proto P')")
    if sources and ports:
        raise UsageError("an entry matches one field: a source prefix or a destination port, not both")
    if not sources and not ports:
        raise UsageError("nothing to match: give 'from ADDRESS' or 'PORT[/tcp|udp]'")
    if proto and any(p.proto != proto for p in ports):
        raise UsageError(f"port protocol and 'proto {proto}' disagree")
    return [*sources, *ports]


def read_prefix_lines(lines: Iterable[str], source: str = "input") -> Iterator[Prefix]:
    """Prefixes one per line; blank lines and ``#`` comments skipped. An error
    names the line."""
    for num, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            yield parse_prefix(text)
        except UsageError as exc:
            raise UsageError(f"{source} line {num}: {exc}") from None


def parse_action(word: str) -> Action:
    try:
        act = Action[word.upper()]
    except KeyError:
        raise UsageError(f"bad action {word!r}: allow or deny") from None
    if act is Action.NONE:
        raise UsageError(f"bad action {word!r}: allow or deny")
    return act
