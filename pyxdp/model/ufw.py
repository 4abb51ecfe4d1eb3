"""A ufw firewall as pyxdp rules (``pyxdp-load import ufw``): ufw keeps the
rules a user typed as ``### tuple ###`` lines in ``/etc/ufw/user.rules``
(IPv4) and ``user6.rules`` (IPv6), one list per family, and its policies in
``/etc/default/ufw``. This module reads those texts and gives the same
firewall as one ordered pyxdp rule list, with one note per ufw rule or
setting it cannot carry over exactly. Pure Python: no root, no libbpf.

A rule ufw added for both families is one tuple in each file; the two lists
are merged so that each family sees its own list in ufw's order (a rule in
only the IPv4 list, with no address, becomes ``from 0.0.0.0/0``: pyxdp's
rule naming a prefix matches only that family)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from ..errors import UsageError
from ..layout import Verdict
from .rules import Addr, Rule, parse_rule_words

TUPLE = re.compile(r"^### tuple ###\s*(.*)$")
ANY4, ANY6 = "0.0.0.0/0", "::/0"


class UfwRule(NamedTuple):
    """One ``### tuple ###`` line as ufw wrote it."""

    action: str  # allow, deny, reject or limit
    proto: str  # any, tcp, udp, or another protocol ufw knows (esp, ah, gre, ipv6, igmp, ...)
    dport: str  # 'any', 'N', 'LOW:HIGH' or a list
    dst: str
    sport: str
    src: str
    direction: str = "in"
    iface_in: str = ""
    iface_out: str = ""
    dapp: str = ""
    sapp: str = ""
    log: str = ""  # '', 'log' or 'log-all'
    route: bool = False
    comment: str = ""
    v6: bool = False

    def words(self, with_comment: bool = True) -> list[str]:
        """The rule in the order ufw's own grammar takes it
        (``ufw [route] ACTION [in|out [on IF]] [log] [proto P] [from A [port P|app N]] [to B [...]]``)."""
        out = ["route"] if self.route else []
        out.append(self.action)
        if self.direction != "in" or self.iface_in or self.iface_out:
            out.append(self.direction)
        iface = self.iface_in or self.iface_out
        if iface:
            out += ["on", iface]
        if self.log:
            out.append(self.log)
        if self.proto != "any":
            out += ["proto", self.proto]
        for word, addr, port, app in (("from", self.src, self.sport, self.sapp),
                                      ("to", self.dst, self.dport, self.dapp)):
            out += [word, "any" if addr in (ANY4, ANY6) else addr]
            if app:
                out += ["app", app]
            elif port != "any":
                out += ["port", port]
        if with_comment and self.comment:
            out += ["comment", self.comment]
        return out

    def __str__(self) -> str:
        text = " ".join(w if " " not in w and w else repr(w) for w in self.words())
        return text + (" (v6)" if self.v6 else "")


def _unhex(text: str) -> str:
    try:
        return bytes.fromhex(text).decode("utf-8", "replace")
    except ValueError:
        return text


def parse_tuple(line: str, v6: bool) -> UfwRule:
    """One tuple (the text after ``### tuple ###``): ``ACTION PROTO DPORT DST
    SPORT SRC [DAPP SAPP] [DIRECTION[_IFACE]]`` and ``comment=HEX`` last."""
    body, _, comment = line.partition(" comment=")
    f = body.split()
    if len(f) not in (6, 7, 8, 9):
        raise UsageError(f"malformed ufw rule tuple (expected 6 to 9 fields): {line.strip()!r}")
    action, route = f[0], False
    if action.startswith("route:"):
        route, action = True, action[len("route:"):]
    action, _, log = action.partition("_")
    direction, iface_in, iface_out = "in", "", ""
    if len(f) in (7, 9):
        last = f[-1]
        if "!" in last:  # route rules: in_eth0!out_eth1
            a, _, b = last.partition("!")
            iface_in, iface_out = a.partition("_")[2], b.partition("_")[2]
        else:
            direction, _, iface = last.partition("_")
            if direction == "in":
                iface_in = iface
            else:
                iface_out = iface
    dapp = sapp = ""
    if len(f) >= 8:
        dapp = "" if f[6] == "-" else f[6].replace("%20", " ")
        sapp = "" if f[7] == "-" else f[7].replace("%20", " ")
    return UfwRule(action, f[1], f[2], f[3], f[4], f[5], direction, iface_in, iface_out, dapp, sapp, log, route,
                   _unhex(comment.strip()) if comment.strip() else "", v6)


def parse_user_rules(text: str, v6: bool = False) -> list[UfwRule]:
    """The rules of a ``user.rules`` (``user6.rules`` with ``v6``) file, in order."""
    out = []
    for line in text.splitlines():
        m = TUPLE.match(line)
        if m:
            out.append(parse_tuple(m.group(1), v6))
    return out


def parse_defaults(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines of ``/etc/default/ufw`` (or ``ufw.conf``), quotes removed."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip().strip("\"'")
    return out


class Imported(NamedTuple):
    """What ``import ufw`` makes: the rules in order, the policy (None: not
    carried over), and one note per thing that is not carried over exactly."""

    rules: tuple[Rule, ...]
    policy: Verdict | None
    notes: tuple[str, ...]


def to_rule(u: UfwRule, notes: list[str]) -> Rule | None:
    """The pyxdp rule for one ufw rule (None: not carried over), noting what changes."""
    words = u.words()
    try:
        return parse_rule_words(words)
    except UsageError as exc:
        first = str(exc)
    where = f"ufw rule '{u}'"
    if u.direction == "out" or u.route or u.iface_out:
        notes.append(f"{where}: not carried over ({first})")
        return None
    plain = u._replace(comment="", log="", dapp="", sapp="")
    lost = []
    if u.comment:
        lost.append("without its comment")
    if u.log:
        lost.append(f"without its '{u.log}' logging")
    if u.dapp or u.sapp:
        if (u.dapp and u.dport == "any") or (u.sapp and u.sport == "any"):
            notes.append(f"{where}: not carried over ({first}; ufw wrote no ports for the application)")
            return None
        lost.append("without its application name (its ports are carried over)")
    if u.action in ("reject", "limit"):
        stand_in = "deny" if u.action == "reject" else "allow"
        lost.append(f"'{u.action}' as '{stand_in}'" +
                    (" (dropped without a reply)" if u.action == "reject" else " (no rate limit)"))
        plain = plain._replace(action=stand_in)
    try:
        rule = parse_rule_words(plain.words())
    except UsageError as exc:
        notes.append(f"{where}: not carried over ({exc})")
        return None
    notes.append(f"{where}: carried over as '{rule}', " + ", ".join(lost))
    return rule


def _family_only(rule: Rule, family: int) -> Rule:
    """``rule`` restricted to one family: a side with no address names the family's whole space."""
    if rule.src.family or rule.dst.family or rule.src.set or rule.dst.set:
        return rule
    from .prefix import parse_prefix

    return rule._replace(src=Addr(prefix=parse_prefix(ANY4 if family == 4 else ANY6)))


def merge_families(v4: Sequence[Rule], v6: Sequence[Rule]) -> list[Rule]:
    """One list whose rules of each family are ``v4`` and ``v6`` in their
    order: rules that are in both (ufw's two copies of a rule for both
    families) become one, along the longest common subsequence; the others
    are kept to their family."""
    n, m = len(v4), len(v6)
    common = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            both = v4[i] == v6[j] and not v4[i].src.family and not v4[i].dst.family
            common[i][j] = common[i + 1][j + 1] + 1 if both else max(common[i + 1][j], common[i][j + 1])
    out: list[Rule] = []
    i = j = 0
    while i < n or j < m:
        if i < n and j < m and v4[i] == v6[j] and not v4[i].src.family and not v4[i].dst.family \
                and common[i][j] == common[i + 1][j + 1] + 1:
            out.append(v4[i])
            i, j = i + 1, j + 1
        elif j >= m or (i < n and common[i + 1][j] >= common[i][j + 1]):
            out.append(_family_only(v4[i], 4))
            i += 1
        else:
            out.append(_family_only(v6[j], 6))
            j += 1
    return out


POLICIES = {"ACCEPT": Verdict.PASS, "DROP": Verdict.DROP}


def convert(user4: str, user6: str | None, defaults: str, conf: str | None = None) -> Imported:
    """The texts of ``user.rules``, ``user6.rules`` (None: missing), ``/etc/default/ufw``
    and ``ufw.conf`` (None: missing) as pyxdp rules and policy."""
    notes: list[str] = []
    d = parse_defaults(defaults)
    lists: list[list[Rule]] = [[], []]
    ipv6 = d.get("IPV6", "yes").lower() == "yes"
    v4_notes: set[str] = set()
    for k, (text, v6) in enumerate(((user4, False), (user6, True))):
        if text is None:
            continue
        for u in parse_user_rules(text, v6):
            if v6 and not ipv6:
                notes.append(f"ufw rule '{u}': not carried over (IPV6=no: ufw does not apply its IPv6 rules)")
                continue
            mine: list[str] = []
            rule = to_rule(u, mine)
            for note in mine:  # the IPv6 copy of a rule for both families: its IPv4 copy's note says it
                if not v6:
                    v4_notes.add(note)
                elif note.replace(" (v6)'", "'", 1) in v4_notes:
                    continue
                notes.append(note)
            if rule is not None:
                lists[k].append(rule)
    if not ipv6:
        rules = [_family_only(r, 4) for r in lists[0]]
        notes.append("IPV6=no: ufw leaves IPv6 to the policy of ip6tables (not managed); the rules are kept to "
                     "IPv4 and IPv6 gets pyxdp's policy")
    else:
        rules = merge_families(lists[0], lists[1])
    seen: set[Rule] = set()
    unique = []
    for r in rules:  # e.g. 'allow 22/tcp' and 'allow 22/tcp comment X' both carried over without the comment
        if r in seen:
            notes.append(f"'{r}': a second copy is left out (pyxdp keeps one copy of a rule)")
            continue
        seen.add(r)
        unique.append(r)
    raw = d.get("DEFAULT_INPUT_POLICY", "DROP").upper()
    policy = POLICIES.get(raw)
    if policy is None:
        policy = Verdict.DROP
        notes.append(f"DEFAULT_INPUT_POLICY={raw}: carried over as policy drop (dropped without a reply)")
    out = d.get("DEFAULT_OUTPUT_POLICY", "ACCEPT").upper()
    if out != "ACCEPT":
        notes.append(f"DEFAULT_OUTPUT_POLICY={out}: not carried over (pyxdp filters incoming packets)")
    if conf is not None and parse_defaults(conf).get("ENABLED", "no").lower() != "yes":
        notes.append("ufw is not enabled there (ENABLED=no in ufw.conf): its rules are carried over all the same")
    return Imported(tuple(unique), policy, tuple(notes))
