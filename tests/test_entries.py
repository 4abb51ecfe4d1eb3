"""Entry parsing, validation and encoding: pure Python, no root."""

from __future__ import annotations

import pytest

from pyxdp.entries import (
    Entry,
    Port,
    Prefix,
    parse_action,
    parse_entry_words,
    parse_port,
    parse_prefix,
    parse_ttl,
    read_prefix_lines,
)
from pyxdp.errors import UsageError
from pyxdp.filter import Config
from pyxdp.layout import CONFIG_SIZE, Action, Verdict


@pytest.mark.parametrize(
    "text, family, plen, shown",
    [
        ("203.0.113.0/24", 4, 24, "203.0.113.0/24"),
        ("203.0.113.7", 4, 32, "203.0.113.7/32"),
        ("0.0.0.0/0", 4, 0, "0.0.0.0/0"),
        ("2001:db8::/32", 6, 32, "2001:db8::/32"),
        ("2001:db8::1", 6, 128, "2001:db8::1/128"),
        ("::/0", 6, 0, "::/0"),
        ("2001:db8:0:0:0:0:0:0/48", 6, 48, "2001:db8::/48"),
    ],
)
def test_prefix_ok(text: str, family: int, plen: int, shown: str) -> None:
    p = parse_prefix(text)
    assert (p.family, p.plen, str(p)) == (family, plen, shown)


@pytest.mark.parametrize(
    "text, says",
    [
        ("300.1.2.3", "bad address"),
        ("1.2.3", "bad address"),
        ("1.2.3.4.5", "bad address"),
        ("hello", "bad address"),
        ("", "bad address"),
        ("10.0.0.1/8", "host bits set (did you mean 10.0.0.0/8?)"),
        ("2001:db8::1/32", "did you mean 2001:db8::/32?"),
        ("10.0.0.0/33", "IPv4 takes 0 to 32"),
        ("2001:db8::/129", "IPv6 takes 0 to 128"),
        ("10.0.0.0/-1", "bad prefix length"),
        ("10.0.0.0/", "bad prefix length"),
        ("10.0.0.0/8x", "bad prefix length"),
        ("1::2::3", "bad address"),
    ],
)
def test_prefix_bad(text: str, says: str) -> None:
    with pytest.raises(UsageError, match=None) as exc:
        parse_prefix(text)
    assert says in str(exc.value)
    assert "\n" not in str(exc.value)


def test_prefix_key_is_masked_network_order() -> None:
    p = parse_prefix("10.1.0.0/16")
    assert p.addr == bytes([10, 1, 0, 0])


def test_ports() -> None:
    assert parse_port("22/tcp") == [Port("tcp", 22)]
    assert parse_port("53") == [Port("tcp", 53), Port("udp", 53)]
    assert Port("udp", 53).slot == 65536 + 53
    for bad in ("0/tcp", "65536/udp", "22/sctp", "x/tcp", "-1"):
        with pytest.raises(UsageError):
            parse_port(bad)


def test_ttl() -> None:
    assert parse_ttl("600") == 600
    assert parse_ttl("10m") == 600
    assert parse_ttl("2h") == 7200
    assert parse_ttl("1d") == 86400
    for bad in ("0", "-5", "5x", "", "m", "99999999999999", "1.5"):
        with pytest.raises(UsageError):
            parse_ttl(bad)


def test_words_grammar() -> None:
    assert parse_entry_words(["from", "203.0.113.0/24"]) == [parse_prefix("203.0.113.0/24")]
    assert parse_entry_words(["from", "10.0.0.0/8", "2001:db8::/32"]) == [
        parse_prefix("10.0.0.0/8"), parse_prefix("2001:db8::/32")]
    assert parse_entry_words(["22/tcp", "53/udp"]) == [Port("tcp", 22), Port("udp", 53)]
    assert parse_entry_words(["to", "any", "port", "53", "proto", "udp"]) == [Port("udp", 53)]
    assert parse_entry_words(["proto", "tcp", "to", "any", "port", "22"]) == [Port("tcp", 22)]
    assert parse_entry_words(["from", "any", "to", "any", "port", "80"]) == [Port("tcp", 80), Port("udp", 80)]


@pytest.mark.parametrize(
    "words, says",
    [
        (["from"], "expected an address"),
        (["frm", "1.2.3.4"], "unexpected 'frm'"),
        (["from", "1.2.3.4", "22/tcp"], "one field"),
        (["to", "10.0.0.1", "port", "22"], "only 'to any'"),
        (["proto", "tcp"], "needs a port"),
        (["port", "70000"], "bad port"),
        (["proto", "udp", "22/tcp"], "disagree"),
        (["port", "22", "port", "23"], "'port' given twice"),
        (["proto", "tcp", "proto", "udp", "port", "1"], "'proto' given twice"),
        ([], "nothing to match"),
    ],
)
def test_words_bad(words: list[str], says: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_entry_words(words)
    assert says in str(exc.value)


def test_action() -> None:
    assert parse_action("deny") is Action.DENY
    assert parse_action("allow") is Action.ALLOW
    for bad in ("none", "drop", ""):
        with pytest.raises(UsageError):
            parse_action(bad)


def test_file_lines_name_the_bad_line() -> None:
    lines = ["# blocklist", "10.0.0.0/8", "", "192.0.2.1  # one host", "300.0.0.0/8"]
    it = read_prefix_lines(lines, "list.txt")
    assert next(it) == parse_prefix("10.0.0.0/8")
    assert next(it) == parse_prefix("192.0.2.1")
    with pytest.raises(UsageError) as exc:
        next(it)
    assert str(exc.value).startswith("list.txt line 5: bad address")


def test_entry_text() -> None:
    assert str(Entry(parse_prefix("192.0.2.0/24"), Action.DENY, 60)) == "deny from 192.0.2.0/24 --ttl 60"
    assert str(Entry(Port("tcp", 22), Action.ALLOW)) == "allow 22/tcp"


def test_config_roundtrip() -> None:
    cfg = Config(Verdict.DROP, 7, (32, 24, 8), (128, 64, 0))
    raw = cfg.encode()
    assert len(raw) == CONFIG_SIZE
    assert Config.decode(raw) == cfg


def test_prefix_sorting_and_hashing() -> None:
    a, b = parse_prefix("10.0.0.0/8"), parse_prefix("9.0.0.0/8")
    assert sorted([a, b]) == [b, a]
    assert len({a, parse_prefix("10.0.0.0/8")}) == 1
    assert isinstance(a, Prefix)
