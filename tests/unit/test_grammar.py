"""What users type, without root (no BPF, no kernel): prefixes and TTLs
(pyxdp.model.prefix), prefix files, the rule-set file (pyxdp.model.rulefile), and where a
set's prefix lengths are stored (pyxdp.store.sets.plan_hashed)."""

from __future__ import annotations

import os
from socket import AF_INET, AF_INET6, inet_pton

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyxdp.errors import UsageError
from pyxdp.layout import HASHED_MAX, Verdict
from pyxdp.model.prefix import MASKS4, MASKS6, MAX_ECHO, MAX_TTL, Prefix, parse_prefix, parse_ttl, read_prefix_lines
from pyxdp.model.rulefile import Element, RuleSetSpec, format_ruleset, parse_element, parse_ruleset, sort_elements
from pyxdp.model.rules import parse_rule
from pyxdp.store.sets import SHARE_TO_HASH, SMALL_SET, plan_hashed

EXAMPLES = int(os.environ.get("PYXDP_GRAMMAR_EXAMPLES", "150"))
FAST = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def ip(text: str) -> bytes:
    return inet_pton(AF_INET6 if ":" in text else AF_INET, text)


# ---- prefixes ----------------------------------------------------------------------------


@pytest.mark.parametrize("text,family,addr,plen", [
    ("203.0.113.0/24", 4, "203.0.113.0", 24),
    ("0.0.0.0/0", 4, "0.0.0.0", 0),
    ("10.0.0.0/8", 4, "10.0.0.0", 8),
    ("192.0.2.9", 4, "192.0.2.9", 32),
    ("192.0.2.9/32", 4, "192.0.2.9", 32),
    ("192.0.2.9/032", 4, "192.0.2.9", 32),
    ("2001:db8::/32", 6, "2001:db8::", 32),
    ("2001:DB8::/32", 6, "2001:db8::", 32),
    ("::/0", 6, "::", 0),
    ("2001::1", 6, "2001::1", 128),
    ("::1", 6, "::1", 128),
    ("fe80::/10", 6, "fe80::", 10),
    ("2001:db8::1/128", 6, "2001:db8::1", 128),
])
def test_prefixes(text: str, family: int, addr: str, plen: int) -> None:
    p = parse_prefix(text)
    assert p == Prefix(family, ip(addr), plen)
    assert p.maxlen == (32 if family == 4 else 128)
    assert parse_prefix(str(p)) == p
    assert str(p) == f"{addr}/{plen}"


@pytest.mark.parametrize("text,says", [
    ("", "bad address ''"),
    ("/24", "bad address"),
    ("any", "bad address 'any'"),
    ("1.2.3", "bad address '1.2.3'"),
    ("1.2.3.4.5", "bad address"),
    ("256.0.0.0", "bad address"),
    ("10.0.0.0/33", "IPv4 takes 0 to 32"),
    ("10.0.0.0/", "IPv4 takes 0 to 32"),
    ("10.0.0.0/-1", "IPv4 takes 0 to 32"),
    ("10.0.0.0/+8", "IPv4 takes 0 to 32"),
    ("10.0.0.0/ 8", "IPv4 takes 0 to 32"),
    ("10.0.0.0/0008", "IPv4 takes 0 to 32"),
    ("10.0.0.0/8/8", "IPv4 takes 0 to 32"),
    ("::/129", "IPv6 takes 0 to 128"),
    ("2001:db8::/1000", "IPv6 takes 0 to 128"),
    ("10.0.0.1/8", "did you mean 10.0.0.0/8?"),
    ("192.0.2.77/24", "did you mean 192.0.2.0/24?"),
    ("2001:db8::1/32", "did you mean 2001:db8::/32?"),
    ("10.0.0.0/²", "bad"),
    ("10.0.0.0/٢", "bad"),
    ("²", "bad address"),
    ("1²7.0.0.1", "bad address"),
    ("١٢٧.0.0.1", "bad address"),
    ("10.0.0.0/8²", "bad"),
    ("::ffff:192.0.2.9", "write the IPv4 address (192.0.2.9)"),
    ("::ffff:192.0.2.9/128", "192.0.2.9"),
    ("::ffff:c000:209", "192.0.2.9"),
    ("2001:db8::g", "bad address"),
    (" 10.0.0.0/8", "bad address"),
])
def test_bad_prefixes(text: str, says: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_prefix(text)
    assert says in str(exc.value)
    if text == "::ffff:192.0.2.9":
        assert "IPv4-mapped" in str(exc.value)


def test_a_huge_bad_prefix_is_quoted_short() -> None:
    for huge in ("1" * 100_000, "²" * 100_000, "10.0.0.0/" + "9" * 100_000, ":" * 100_000):
        with pytest.raises(UsageError) as exc:
            parse_prefix(huge)
        assert len(str(exc.value)) < MAX_ECHO + 100


@FAST
@given(st.sampled_from([4, 6]), st.binary(min_size=16, max_size=16), st.integers(0, 128), st.binary(min_size=16,
                                                                                                      max_size=16))
def test_holds_and_truncate(family: int, raw: bytes, plen: int, other: bytes) -> None:
    n = 4 if family == 4 else 16
    raw, other = raw[:n], other[:n]
    plen = min(plen, 8 * n)
    host = Prefix(family, raw, 8 * n)
    p = host.truncate(plen)
    masks = MASKS4 if family == 4 else MASKS6
    assert p.plen == plen and len(p.addr) == n
    assert p.addr == bytes(a & m for a, m in zip(raw, masks[plen]))
    assert p.holds(raw)
    assert p.truncate(plen) == p
    assert host.truncate(8 * n) == host
    assert p.truncate(0).addr == bytes(n)
    # other lies in p exactly when their first plen bits agree
    want = int.from_bytes(other, "big") >> (8 * n - plen) == int.from_bytes(raw, "big") >> (8 * n - plen)
    assert p.holds(other) == want
    assert not p.holds(raw + b"\0")  # an address of the other length is never held
    assume(not (family == 6 and p.addr[:12] == b"\0" * 10 + b"\xff\xff"))
    assert parse_prefix(str(p)) == p


def test_masks() -> None:
    assert MASKS4[0] == bytes(4) and MASKS4[32] == b"\xff" * 4 and MASKS4[9] == b"\xff\x80\0\0"
    assert MASKS6[0] == bytes(16) and MASKS6[128] == b"\xff" * 16 and MASKS6[65] == b"\xff" * 8 + b"\x80" + bytes(7)
    assert len(MASKS4) == 33 and len(MASKS6) == 129
    assert Prefix(4, ip("10.1.2.0"), 24).holds(ip("10.1.2.255"))
    assert not Prefix(4, ip("10.1.2.0"), 24).holds(ip("10.1.3.0"))
    assert Prefix(4, ip("0.0.0.0"), 0).holds(ip("255.255.255.255"))
    assert not Prefix(4, ip("0.0.0.0"), 0).holds(ip("::"))


# ---- time to live -------------------------------------------------------------------------


@pytest.mark.parametrize("text,seconds", [
    ("0", 0), ("0s", 0), ("0d", 0), ("1", 1), ("90", 90), ("90s", 90), ("5m", 300), ("2h", 7200), ("3d", 259200),
    (" 10 ", 10), ("007", 7), (str(MAX_TTL), MAX_TTL), (str(MAX_TTL + 1), MAX_TTL), ("99999999999999999d", MAX_TTL),
    ("9" * 30, MAX_TTL),
])
def test_ttls(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("bad", ["", " ", "s", "d", "-1", "+5", "1.5", "1w", "5 m", "5ms", "1e3", "²", "²²", "٢",
                                 "1²", "10²s", "0x10", "9" * 31, "permanent"])
def test_bad_ttls(bad: str) -> None:
    with pytest.raises(UsageError, match="bad ttl") as exc:
        parse_ttl(bad)
    assert "0: permanent" in str(exc.value)


def test_a_huge_bad_ttl_is_quoted_short() -> None:
    with pytest.raises(UsageError) as exc:
        parse_ttl("x" * 100_000)
    assert len(str(exc.value)) < MAX_ECHO + 100


# ---- prefix files -----------------------------------------------------------------------


def test_prefix_lines_skip_comments_and_blanks() -> None:
    lines = ["# bans\n", "\n", "192.0.2.7\n", "   198.51.100.0/24   # a /24\n", "\t\n", "2001:db8::/32", "# end"]
    assert list(read_prefix_lines(lines)) == [parse_prefix("192.0.2.7/32"), parse_prefix("198.51.100.0/24"),
                                              parse_prefix("2001:db8::/32")]
    assert list(read_prefix_lines([])) == []


@pytest.mark.parametrize("bad,says", [
    ("10.0.0.1/8", "did you mean 10.0.0.0/8?"),
    ("192.0.2.7 192.0.2.8", "bad address"),
    ("::ffff:192.0.2.9", "192.0.2.9"),
    ("١٢٧.0.0.1", "bad address"),
])
def test_a_bad_prefix_line_is_named_by_number(bad: str, says: str) -> None:
    lines = ["# header", "192.0.2.7", "", bad, "192.0.2.8"]
    got = read_prefix_lines(lines, "bans.txt")
    assert next(got) == parse_prefix("192.0.2.7")
    with pytest.raises(UsageError, match=r"^bans\.txt line 4: ") as exc:
        next(got)
    assert says in str(exc.value)


def test_a_huge_bad_line_is_quoted_cut() -> None:
    with pytest.raises(UsageError) as exc:
        list(read_prefix_lines(["192.0.2.1", "x" * 100_000], "f"))
    msg = str(exc.value)
    assert msg.startswith("f line 2: ")
    assert "x" * MAX_ECHO in msg and "x" * (MAX_ECHO + 1) not in msg
    assert len(msg) < MAX_ECHO + 100


# ---- the rule-set file ------------------------------------------------------------------

CANONICAL = '''\
# pyxdp firewall: 'pyxdp-load apply FILE' installs it, 'pyxdp-load save' writes it

policy = "drop"
rules = [
    "deny from @banned",
    "allow proto tcp from @office to any port 22",
    "deny proto tcp to any port 22",
    "allow to any port 53",
    "allow proto tcp from 192.0.2.0/24 port 1024:65535 to 203.0.113.0/24 port 80,443 on eth0",
]

[sets]
banned = [
    "198.51.100.0/24 ttl 583",
    "203.0.113.7/32",
    "2001:db8:bad::/48 ttl 86400",
]
office = [
    "192.0.2.0/24",
    "2001:db8:1::/48",
]
empty = [
]
'''


def test_a_canonical_file_parses_and_formats_back_unchanged() -> None:
    spec = parse_ruleset(CANONICAL, "rules.toml")
    assert spec.policy == Verdict.DROP
    assert [str(r) for r in spec.rules][:3] == ["deny from @banned", "allow proto tcp from @office to any port 22",
                                                "deny proto tcp to any port 22"]
    assert spec.sets["banned"] == [Element(parse_prefix("198.51.100.0/24"), 583),
                                   Element(parse_prefix("203.0.113.7/32"), None),
                                   Element(parse_prefix("2001:db8:bad::/48"), 86400)]
    assert spec.sets["empty"] == []
    assert format_ruleset(spec) == CANONICAL
    assert parse_ruleset(format_ruleset(spec)) == spec


def test_a_hand_written_file_is_normalised() -> None:
    text = '''
policy = "pass"   # comment
rules = ["allow 22/tcp", 'deny from 10.0.0.1', "allow in on eth0 from @x proto udp"]
[sets]
x = ["2001:db8::/32", "10.0.0.0/8 ttl 1h", "10.0.0.0/8 ttl 2h", "192.0.2.1 ttl 0"]
'''
    spec = parse_ruleset(text)
    assert spec == RuleSetSpec(
        (parse_rule("allow proto tcp to any port 22"), parse_rule("deny from 10.0.0.1/32"),
         parse_rule("allow proto udp from @x on eth0")),
        {"x": [Element(parse_prefix("2001:db8::/32")), Element(parse_prefix("10.0.0.0/8"), 7200),
               Element(parse_prefix("192.0.2.1/32"))]},
        Verdict.PASS)
    # a set has no order: what save writes is sorted
    back = parse_ruleset(format_ruleset(spec))
    assert back.rules == spec.rules and back.policy == spec.policy
    assert back.sets == {"x": sort_elements(spec.sets["x"])}
    assert format_ruleset(back) == format_ruleset(spec)
    assert parse_ruleset("") == RuleSetSpec((), {}, None)


@pytest.mark.parametrize("text,element", [
    ("192.0.2.0/24", Element(parse_prefix("192.0.2.0/24"))),
    ("192.0.2.1", Element(parse_prefix("192.0.2.1/32"))),
    ("2001:db8::/32 ttl 60", Element(parse_prefix("2001:db8::/32"), 60)),
    ("2001:db8::/32 ttl 1d", Element(parse_prefix("2001:db8::/32"), 86400)),
    ("10.0.0.0/8 ttl 0", Element(parse_prefix("10.0.0.0/8"))),
    (f"10.0.0.0/8 ttl {MAX_TTL * 2}", Element(parse_prefix("10.0.0.0/8"), MAX_TTL)),
])
def test_elements(text: str, element: Element) -> None:
    assert parse_element(text) == element
    assert parse_element(str(element)) == element


@pytest.mark.parametrize("bad", ["", "ttl 5", "10.0.0.0/8 ttl", "10.0.0.0/8 ttl 5 6", "10.0.0.0/8 for 5",
                                 "10.0.0.0/8 ttl ²", "10.0.0.1/8 ttl 5"])
def test_bad_elements(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_element(bad)


def _file(*lines: str) -> str:
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text,says", [
    (_file("# 1", "# 2", "policy = 'drop'", "rules = [", '    "allow 22/tcp",',
           '    "deny proto tcp to any port 99999",', "]"), "rules.toml line 6: bad port '99999'"),
    (_file("rules = [", '    "allow 22/tcp",', "]", "[sets]", "x = [", '    "10.0.0.1/8",', "]"),
     "rules.toml line 6: set x: 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)"),
    (_file("rules = []", "[sets]", "x = [", '    "10.0.0.0/8 ttl soon",', "]"), "rules.toml line 4: set x: bad ttl"),
    (_file("policy = 'drop'", "rules = []", "polcy = 'pass'"), "rules.toml line 3: unknown key 'polcy'"),
    (_file("policy = 'reject'"), "rules.toml line 1: policy must be \"pass\" or \"drop\", not 'reject'"),
    (_file("policy = 1"), "rules.toml line 1: policy must be"),
    (_file("", "rules = 'allow 22'"), "rules.toml line 2: rules must be a list of strings"),
    (_file("rules = [1]"), "rules.toml line 1: rules must be a list of strings"),
    (_file("rules = [", '    "deny from @banned",', "]"),
     "rules.toml line 1: a rule uses @banned, which the file does not define under [sets]"),
    (_file("rules = [", '    "deny from @banned",', "]", "[sets]", "other = []"), "does not define under [sets]"),
    (_file("rules = [", '    "allow 22/tcp",', '    "allow proto tcp to any port 22",', "]"),
     "rules.toml line 3: rule given twice: allow proto tcp to any port 22"),
    (_file("rules = [", '    "deny from 10.0.0.0/8",', '    "deny in from 10.0.0.0/8",', "]"),
     "rule given twice: deny from 10.0.0.0/8"),
    (_file("[sets]", "'bad.name' = []"), "bad set name 'bad.name'"),
    (_file("[sets]", "x = '10.0.0.0/8'"), "rules.toml line 2: set x must be a list of strings"),
    (_file("sets = 5"), "rules.toml line 1: sets must be a table"),
    (_file("rules = [", '    "reject 22",', "]"), "rules.toml line 2: 'reject' is not supported"),
    (_file("rules = [", "  'allow 22',", "]]"), "rules.toml: "),
])
def test_file_errors_name_the_line(text: str, says: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_ruleset(text, "rules.toml")
    assert says in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("text", [
    _file("rules = [", f'    "allow from {"1" * 100_000}",', "]"),
    _file("rules = [", f'    "{"x" * 100_000}",', "]"),
    _file(f"{'k' * 100_000} = 1"),
    _file(f"policy = '{'p' * 100_000}'"),
    _file("[sets]", f"x = ['{'1' * 100_000}']"),
    _file("[sets]", f"x = ['10.0.0.0/8 ttl {'9' * 100_000}']"),
    _file("[sets]", f"{'s' * 100_000} = []"),
    "x" * 100_000,
    "rules = [" + "1" * 100_000,
])
def test_file_errors_stay_short(text: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_ruleset(text, "rules.toml")
    assert len(str(exc.value)) < 400


# hypothesis: random whole firewalls survive format -> parse

_RULE_TEXTS = [
    "allow 22/tcp", "deny 53", "allow 1000:2000/udp", "deny from 10.0.0.0/8", "deny from 2001:db8::/32",
    "allow proto tcp from 192.0.2.0/24 to any port 22", "allow in on eth0 to any port 80", "deny proto icmp",
    "allow proto icmpv6 from fe80::/10", "deny from any port 53 to 203.0.113.0/24 port 1:1023",
]
_SET_NAMES = ["banned", "office", "a-b_9", "X"]


@st.composite
def specs(draw: st.DrawFn) -> RuleSetSpec:
    names = draw(st.lists(st.sampled_from(_SET_NAMES), unique=True))
    pool = [parse_rule(t) for t in _RULE_TEXTS]
    for n in names:
        pool += [parse_rule(f"deny from @{n}"), parse_rule(f"allow proto tcp from @{n} to any port 22"),
                 parse_rule(f"deny to @{n}")]
    rules = draw(st.lists(st.sampled_from(pool), unique=True, max_size=12))
    sets = {}
    for n in names:
        elements: dict[Prefix, Element] = {}
        for _ in range(draw(st.integers(0, 6))):
            family = draw(st.sampled_from([4, 6]))
            size = 4 if family == 4 else 16
            p = Prefix(family, draw(st.binary(min_size=size, max_size=size)), size * 8)
            p = p.truncate(draw(st.integers(0, size * 8)))
            assume(not (family == 6 and p.addr[:12] == b"\0" * 10 + b"\xff\xff"))
            ttl = draw(st.none() | st.integers(1, MAX_TTL))
            elements[p] = Element(p, ttl)
        sets[n] = sorted(elements.values(), key=lambda e: (e.prefix.family, e.prefix.addr, e.prefix.plen))
    policy = draw(st.sampled_from([None, Verdict.PASS, Verdict.DROP]))
    return RuleSetSpec(tuple(rules), sets, policy)


@FAST
@given(specs())
def test_random_rule_sets_round_trip(spec: RuleSetSpec) -> None:
    text = format_ruleset(spec)
    back = parse_ruleset(text, "saved.toml")
    assert back == spec
    assert format_ruleset(back) == text


# ---- set placement ----------------------------------------------------------------------


def v4(**by_len: int) -> list[int]:
    cnt = [0] * 33
    for k, v in by_len.items():
        cnt[int(k[1:])] = v
    return cnt


def test_every_length_is_hashed_when_they_fit() -> None:
    assert plan_hashed(v4(), set()) == set()
    assert plan_hashed(v4(l24=1), set()) == {24}
    assert plan_hashed(v4(l8=1, l16=1, l24=100_000, l32=1_000_000), set()) == {8, 16, 24, 32}
    assert plan_hashed(v4(l8=1, l16=1, l24=1, l32=1), {0, 1, 2, 3}) == {8, 16, 24, 32}
    cnt6 = [0] * 129
    cnt6[48], cnt6[64], cnt6[128] = 5, 7, 1
    assert plan_hashed(cnt6, {56}) == {48, 64, 128}


def test_small_sets_hash_the_most_populous_lengths() -> None:
    cnt = v4(l8=10, l16=20, l20=30, l24=40, l28=50, l32=5)
    assert sum(cnt) < SMALL_SET
    assert plan_hashed(cnt, set()) == {16, 20, 24, 28}
    # ties go to the longer length
    assert plan_hashed(v4(l8=1, l9=1, l10=1, l11=1, l12=1), set()) == {9, 10, 11, 12}


def test_above_1024_elements_a_hashed_length_needs_a_sixteenth() -> None:
    # 2,000 elements: a length earns its probe with at least 125 (2,000 / 16)
    cnt = v4(l8=124, l16=125, l24=1_500, l30=126, l32=125)
    assert sum(cnt) == 2_000 >= SMALL_SET
    got = plan_hashed(cnt, set())
    assert got == {16, 24, 30, 32}
    # only two earn: only two are hashed, the rest stay in the trie
    cnt = v4(l8=100, l16=100, l20=100, l24=1_500, l28=100, l32=200)
    assert sum(cnt) * 1 // SHARE_TO_HASH == 131
    assert plan_hashed(cnt, set()) == {24, 32}
    # a length hashed before that no longer earns its probe leaves
    assert plan_hashed(cnt, {8, 16, 24, 32}) == {24, 32}
    # one element short of 1,024: every length may be hashed
    small = v4(l8=3, l16=3, l20=3, l24=1_011, l28=3)
    assert sum(small) == SMALL_SET - 1
    assert plan_hashed(small, set()) == {16, 20, 24, 28}


def test_hysteresis_keeps_a_hashed_length_until_a_trie_length_has_twice_as_many() -> None:
    current = {8, 16, 24, 32}
    cnt = v4(l8=100, l16=100, l24=100, l32=100, l20=200)
    assert plan_hashed(cnt, current) == current  # 200 is not more than twice 100
    assert plan_hashed(cnt, set()) == {20, 16, 24, 32}  # without history the populous ones win
    cnt = v4(l8=100, l16=110, l24=120, l32=130, l20=201)
    got = plan_hashed(cnt, current)
    assert got == {16, 20, 24, 32}  # the weakest (8) makes way
    assert plan_hashed(cnt, got) == got  # and then it is stable


@FAST
@given(st.lists(st.integers(0, 5_000) | st.just(0), min_size=33, max_size=33)
       | st.lists(st.integers(0, 300) | st.just(0), min_size=129, max_size=129),
       st.data())
def test_plans_are_bounded_stable_and_fair(cnt: list[int], data: st.DataObject) -> None:
    present = {n for n, c in enumerate(cnt) if c}
    current = data.draw(st.sets(st.integers(0, len(cnt) - 1), max_size=HASHED_MAX))
    plan = plan_hashed(cnt, current)
    assert len(plan) <= HASHED_MAX
    assert plan <= present
    if len(present) <= HASHED_MAX:
        assert plan == present
        return
    total = sum(cnt)
    earns = {n for n in present if total < SMALL_SET or cnt[n] * SHARE_TO_HASH >= total}
    assert plan <= earns
    assert len(plan) == min(HASHED_MAX, len(earns))
    assert plan_hashed(cnt, plan) == plan  # applying a plan and planning again changes nothing
    if plan:
        weakest = min(cnt[n] for n in plan)
        assert all(cnt[n] <= 2 * weakest for n in earns - plan)  # no trie length has more than twice as many
    fresh = plan_hashed(cnt, set())
    top = sorted(earns, key=lambda n: (-cnt[n], -n))[:HASHED_MAX]
    assert fresh == set(top)
