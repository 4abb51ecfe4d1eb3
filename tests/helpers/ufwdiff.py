"""The differential test against the real ufw: random scenarios of commands
typed in the grammar ufw and pyxdp share, given to Debian's ufw (in its own
network namespace pair, with private files: :mod:`helpers.ufw`) and to pyxdp
(attached to another pair's host side), then probe packets from each pair's
peer, and what reaches each host's stack compared.

Each host namespace counts what arrives with an nftables chain on the input
hook at priority 100 (after ufw's iptables chains at 0; pyxdp decides before
any of them, in XDP): every probe carries a tag (the IPv4 identification or
the IPv6 flow label) that the chain adds to a set.

A difference is put in a class:
- the rule lists diverged (compared per family after every command, ufw's
  read from its user.rules / user6.rules): the class of the command that made
  them diverge (pyxdp refused it, ufw updated a rule in place, ufw skipped an
  existing rule, ufw's per-family numbering of insert/delete N);
- the lists agree: ufw's before-rules, by the kind of probe (echo request,
  unsolicited ICMP error, DHCP reply, unsolicited ICMPv6 echo reply);
- anything else is ``unexplained``: a bug of pyxdp's matching (or of this test).

``scripts/ufw_diff.py`` runs it at length; tests/kernel/test_ufw.py a few
scenarios with a fixed seed."""

from __future__ import annotations

import ipaddress
import json
import random
import shutil
import socket
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from pyxdp.model.rules import ANY, Rule, format_ports, parse_rule, parse_rule_words
from pyxdp.model.ufw import parse_user_rules, to_rule

from . import env
from .cli import run as pyxdp_run
from .env import NetPair, sh
from .netio import netns
from .ufw import Ufw

HOST4, HOST4B, PEER4 = "10.77.0.2", "10.77.0.3", "10.77.0.1"
HOST6, HOST6B, PEER6 = "fd77::2", "fd77::3", "fd77::1"
SRC4 = ("198.51.100.0/24", "198.51.100.7", "203.0.113.0/25", "10.77.0.1", "10.77.0.0/24")
SRC6 = ("2001:db8:1::/48", "2001:db8:1::5", "2001:db8::/32", "fd77::1", "fd77::/64")
DST4 = ("10.77.0.2", "10.77.0.3", "10.77.0.0/24")
DST6 = ("fd77::2", "fd77::3", "fd77::/64")
OUTSIDE4 = ("192.0.2.33", "198.51.100.130", "203.0.113.200")
OUTSIDE6 = ("2001:db8:9::9", "2001:db8:1:ffff::1", "2001:db9::1")
PORTS = ("22", "53", "80", "443", "8080", "1000:2000", "80,443", "5000:5100,6000")
SPORTS = ("53", "123", "1024:65535", "67")
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
# classes of probe differences that are ufw's before-rules (by probe kind)
BEFORE = {"echo-request": "ufw before-rules: echo requests accepted before the user's rules",
          "icmp-error": "ufw before-rules: ICMP errors about no tracked connection dropped (conntrack INVALID)",
          "dhcp-reply": "ufw before-rules: DHCP replies (udp 67 -> 68) accepted before the user's rules",
          "echo-reply6": "ufw before-rules: ICMPv6 echo replies accepted before the user's rules"}


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass
class Probe:
    kind: str  # syn, udp, echo-request, echo-reply6, icmp-error, dhcp-reply
    src: str
    dst: str
    sport: int = 0
    dport: int = 0
    tag: int = 0

    @property
    def family(self) -> int:
        return 6 if ":" in self.dst else 4

    def __str__(self) -> str:
        ports = f" {self.sport}->{self.dport}" if self.kind in ("syn", "udp", "dhcp-reply") else ""
        return f"{self.kind} {self.src} -> {self.dst}{ports}"

    def packet(self) -> bytes:
        """The IP packet, checksums right (conntrack checks them)."""
        fam = self.family
        if self.kind == "syn":
            proto = TCP
            l4 = struct.pack("!HHIIBBHHH", self.sport, self.dport, 0x1000 + self.tag, 0, 5 << 4, 0x02, 64240, 0, 0)
        elif self.kind in ("udp", "dhcp-reply"):
            proto = UDP
            l4 = struct.pack("!HHHH", self.sport, self.dport, 8 + 8, 0) + b"pyxdp-ud"
        elif self.kind in ("echo-request", "echo-reply6"):
            proto = ICMP if fam == 4 else ICMPV6
            typ = {4: 8, 6: 128}[fam] if self.kind == "echo-request" else 129
            l4 = struct.pack("!BBHHH", typ, 0, 0, self.tag, 1) + b"pyxdp-echo"
        else:  # an ICMP error quoting a UDP datagram the host never sent
            proto = ICMP if fam == 4 else ICMPV6
            quoted_udp = struct.pack("!HHHH", 40000, 33434, 8, 0)
            if fam == 4:
                quoted = _ipv4(self.dst, self.src, UDP, quoted_udp, 1)
                l4 = struct.pack("!BBHI", 3, 3, 0, 0) + quoted
            else:
                quoted = _ipv6(self.dst, self.src, UDP, quoted_udp, 0)
                l4 = struct.pack("!BBHI", 1, 4, 0, 0) + quoted
        at = {TCP: 16, UDP: 6, ICMP: 2, ICMPV6: 2}[proto]
        if fam == 4:
            pseudo = socket.inet_aton(self.src) + socket.inet_aton(self.dst) + struct.pack("!BBH", 0, proto, len(l4))
            c = csum(l4 if proto == ICMP else pseudo + l4)
            return _ipv4(self.src, self.dst, proto, l4[:at] + struct.pack("!H", c) + l4[at + 2:], self.tag)
        pseudo = (socket.inet_pton(socket.AF_INET6, self.src) + socket.inet_pton(socket.AF_INET6, self.dst)
                  + struct.pack("!IxxxB", len(l4), proto))
        c = csum(pseudo + l4)
        return _ipv6(self.src, self.dst, proto, l4[:at] + struct.pack("!H", c) + l4[at + 2:], self.tag)


def _ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + payload


def _ipv6(src: str, dst: str, proto: int, payload: bytes, label: int) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28 | label, len(payload), proto, 64,
                       socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)) + payload


COUNT_TABLE = """
table inet pxseen {
    set seen4 { typeof ip id; size 65535; flags dynamic; }
    set seen6 { typeof ip6 flowlabel; size 65535; flags dynamic; }
    chain input {
        type filter hook input priority 100; policy accept;
        ip id >= 1000 add @seen4 { ip id }
        ip6 flowlabel >= 1000 add @seen6 { ip6 flowlabel }
    }
}
"""


class Host:
    """A namespace pair whose host side (``b``) has a second address per
    family, routes back to the peer, and counts what reaches its stack."""

    def __init__(self, tag: str) -> None:
        self.pair = NetPair(tag)
        b, vb = self.pair.b, self.pair.vb
        sh("ip", "-n", b, "addr", "add", f"{HOST4B}/24", "dev", vb)
        sh("ip", "-n", b, "addr", "add", f"{HOST6B}/64", "dev", vb, "nodad")
        sh("ip", "-n", b, "route", "add", "default", "via", PEER4)
        sh("ip", "-n", b, "-6", "route", "add", "default", "via", PEER6)
        subprocess.run(["ip", "netns", "exec", b, "nft", "-f", "-"], input=COUNT_TABLE, text=True, check=True,
                       capture_output=True)
        self.mac_b = _mac(b, vb)
        self.mac_a = _mac(self.pair.a, self.pair.va)

    def reset_counts(self) -> None:
        for s in ("seen4", "seen6"):
            sh("ip", "netns", "exec", self.pair.b, "nft", "flush", "set", "inet", "pxseen", s)

    def send(self, probes: list[Probe]) -> set[int]:
        """Send the probes from the peer; the tags that reached the host's stack."""
        with netns(self.pair.a):
            raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        with raw:
            raw.bind((self.pair.va, 0))
            for p in probes:
                ip = p.packet()
                bcast = p.dst == "255.255.255.255"
                dst_mac = b"\xff" * 6 if bcast else self.mac_b
                raw.send(dst_mac + self.mac_a + (b"\x08\x00" if p.family == 4 else b"\x86\xdd") + ip)
        last: set[int] | None = None
        for _ in range(40):  # until two readings 50 ms apart agree (every probe is judged by then)
            time.sleep(0.05)
            got = self.seen()
            if got == last:
                break
            last = got
        return last or set()

    def seen(self) -> set[int]:
        out = set()
        for s in ("seen4", "seen6"):
            doc = json.loads(sh("ip", "netns", "exec", self.pair.b, "nft", "-j", "list", "set", "inet", "pxseen",
                                s).stdout)
            for item in doc["nftables"]:
                for e in item.get("set", {}).get("elem", []):
                    out.add(int(e["elem"]["val"]) if isinstance(e, dict) else int(e))
        return out

    def close(self) -> None:
        self.pair.close()


def _mac(ns: str, dev: str) -> bytes:
    info = json.loads(sh("ip", "-j", "-n", ns, "link", "show", dev).stdout)[0]
    return bytes.fromhex(info["address"].replace(":", ""))


# ---- scenarios -------------------------------------------------------------------------


def _rule_words(rng: random.Random) -> list[str]:
    """One rule in a form ufw accepts (mostly; a few that it refuses, as users type them)."""
    action = rng.choice(("allow", "deny"))
    lead = [action] + (["in"] if rng.random() < 0.15 else [])
    form = rng.random()
    if form < 0.3:  # the short form
        port = rng.choice(PORTS)
        proto = rng.choice(("", "/tcp", "/udp")) if port.isdigit() else rng.choice(("/tcp", "/udp"))
        return [*lead, port + proto]
    fam = rng.choice((4, 6))
    src = rng.choice(("any",) + (SRC4 if fam == 4 else SRC6))
    dst = rng.choice(("any",) * 2 + (DST4 if fam == 4 else DST6))
    words = list(lead)
    proto = rng.choice(("", "tcp", "udp", ""))
    proto_first = rng.random() < 0.5
    if proto and proto_first:
        words += ["proto", proto]
    words += ["from", src]
    if proto and rng.random() < 0.25:
        words += ["port", rng.choice(SPORTS)]
    if form < 0.55:
        if src == "any" and dst == "any":
            words += ["to", rng.choice(DST4 if fam == 4 else DST6)]
        elif dst != "any":
            words += ["to", dst]
    else:
        port = rng.choice(PORTS)
        if not proto and not port.isdigit():
            proto = rng.choice(("tcp", "udp"))
            proto_first = False
        words += ["to", dst, "port", port]
    if proto and not proto_first:
        words += ["proto", proto]
    return words


@dataclass
class Scenario:
    seed: int
    commands: list[list[str]] = field(default_factory=list)  # ufw's words; 'delete N' etc. filled in as it runs


def make_commands(rng: random.Random, n: int) -> list[list[str]]:
    """The scenario's commands; insert/delete positions are drawn as it runs (``#`` stands for one)."""
    cmds: list[list[str]] = [["default", rng.choice(("deny", "allow")), "incoming"]]
    for _ in range(n):
        x = rng.random()
        if x < 0.62:
            cmds.append(_rule_words(rng))
        elif x < 0.78:
            cmds.append(["insert", "#", *_rule_words(rng)])
        elif x < 0.88:
            cmds.append(["delete", "#"])
        elif x < 0.95:
            cmds.append(["delete", "@"])  # a rule given before, by its words
        else:
            cmds.append(["default", rng.choice(("deny", "allow")), "incoming"])
    return cmds


def pyxdp_words(words: list[str]) -> list[str]:
    """The same command for pyxdp: 'default deny|allow [incoming]' is its 'policy drop|pass'."""
    if words[0] == "default":
        return ["policy", "drop" if words[1] == "deny" else "pass"]
    return words


# ---- the two firewalls' rule lists, per family -------------------------------------------


def ufw_lists(ufw: Ufw) -> tuple[list[Rule | None], list[Rule | None]]:
    out: tuple[list[Rule | None], list[Rule | None]] = ([], [])
    for k, name in enumerate(("user.rules", "user6.rules")):
        for u in parse_user_rules(ufw.file(name), v6=k == 1):
            out[k].append(to_rule(u, []))
    return out


def pyxdp_rules(pin_dir: str) -> list[Rule]:
    r = pyxdp_run("list", "--json", pin_dir=pin_dir)
    return [parse_rule(json.loads(x)["rule"]) for x in r.stdout.splitlines() if '"rule"' in x]


def per_family(rules: list[Rule]) -> tuple[list[Rule], list[Rule]]:
    """The rules each family sees, as ufw lists them: a side 'from 0.0.0.0/0'
    (or ::/0: how 'import ufw' keeps a rule to one family) is ufw's 'any'."""
    def norm(r: Rule) -> Rule:
        whole = [a.prefix is not None and a.prefix.plen == 0 for a in (r.src, r.dst)]
        return r._replace(src=ANY if whole[0] else r.src, dst=ANY if whole[1] else r.dst)

    return ([norm(r) for r in rules if r.src.family in (0, 4) and r.dst.family in (0, 4) and r.proto != "icmpv6"],
            [norm(r) for r in rules if r.src.family in (0, 6) and r.dst.family in (0, 6) and r.proto != "icmp"])


# ---- probes ----------------------------------------------------------------------------------


def _addr_in(rng: random.Random, prefix: str, family: int, host: bool) -> str:
    """An address in ``prefix`` ('any': the peer's, or another outside one); for a
    destination (``host``), one of the host's own addresses in it."""
    if host:
        cands = [HOST4, HOST4B] if family == 4 else [HOST6, HOST6B]
        if prefix != "any":
            net = ipaddress.ip_network(prefix)
            cands = [c for c in cands if ipaddress.ip_address(c) in net] or cands
        return rng.choice(cands)
    if prefix == "any":
        return rng.choice((PEER4,) + OUTSIDE4 if family == 4 else (PEER6,) + OUTSIDE6)
    net = ipaddress.ip_network(prefix)
    if net.num_addresses == 1:
        return str(net.network_address)
    return str(net.network_address + rng.randrange(1, min(net.num_addresses - 1, 1 << 16)))


def _port_in(rng: random.Random, ports: str | None) -> int:
    if not ports:
        return rng.choice((22, 53, 80, 443, 1500, 5050, 8080, 33000))
    lo, _, hi = rng.choice(ports.split(",")).partition(":")
    return rng.randint(int(lo), int(hi or lo))


def probes_for(rng: random.Random, rules: list[list[str]]) -> list[Probe]:
    """Probes that match each rule (and near misses), plus the fixed ones ufw's before-rules decide."""
    out: list[Probe] = []
    for words in rules:
        try:
            rule = parse_rule_words(words)
        except Exception:  # noqa: BLE001 - a form only ufw takes: no probes of its own
            continue
        fams = [f for f in (4, 6) if rule.src.family in (0, f) and rule.dst.family in (0, f)]
        for fam in fams:
            for near in (False, True):
                kinds = {"tcp": ["syn"], "udp": ["udp"]}.get(rule.proto, ["syn", "udp"])
                kind = rng.choice(kinds)
                src = _addr_in(rng, str(rule.src) if not near or rng.random() < 0.5 else "any", fam, False)
                dst = _addr_in(rng, str(rule.dst), fam, True)
                dport = _port_in(rng, format_ports(rule.dport) if rule.dport else None)
                sport = _port_in(rng, format_ports(rule.sport)) if rule.sport else rng.randint(20000, 60000)
                if near:
                    dport = (dport + rng.choice((1, -1, 7))) % 65536 or 1
                out.append(Probe(kind, src, dst, sport, dport))
    for fam in (4, 6):
        peer, host = (PEER4, HOST4) if fam == 4 else (PEER6, HOST6)
        outside = rng.choice(OUTSIDE4 if fam == 4 else OUTSIDE6)
        out += [Probe("echo-request", peer, host), Probe("echo-request", outside, host),
                Probe("icmp-error", outside, host), Probe("syn", peer, host, rng.randint(20000, 60000), 22),
                Probe("udp", outside, host, rng.randint(20000, 60000), 53)]
    out.append(Probe("echo-reply6", PEER6, HOST6))
    out += [Probe("dhcp-reply", PEER4, "255.255.255.255", 67, 68), Probe("dhcp-reply", PEER4, HOST4, 67, 68)]
    seen: set[tuple[str, str, str, int, int]] = set()
    unique = []
    for p in out:  # one probe per connection: conntrack on ufw's side must see each as new
        key = ("udp" if p.kind == "dhcp-reply" else p.kind, p.src, p.dst, p.sport, p.dport)
        if key in seen and p.kind in ("syn", "udp", "dhcp-reply"):
            continue
        seen.add(key)
        unique.append(p)
    return unique


# ---- a run ------------------------------------------------------------------------------------


@dataclass
class Result:
    scenarios: int = 0
    commands: int = 0
    ufw_refused: int = 0
    ufw_refused_pyxdp_takes: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # pyxdp refused what ufw took, by class
    divergences: Counter[str] = field(default_factory=Counter)  # rule lists diverged, by class
    probes: int = 0
    diffs: Counter[str] = field(default_factory=Counter)  # probe verdict differences, by class
    unexplained: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.__dict__.items()}

    def add(self, doc: dict[str, object]) -> None:
        """Add another run's :meth:`to_json` to this one."""
        for k, v in doc.items():
            mine = getattr(self, k)
            if isinstance(mine, Counter):
                mine.update(v)  # type: ignore[arg-type]
            elif isinstance(mine, list):
                mine.extend(v)  # type: ignore[arg-type]
            else:
                setattr(self, k, mine + v)

    def outside(self) -> list[str]:
        """Differences outside the documented classes: probes, refusals, rule lists."""
        return (list(self.unexplained) + [k for k in self.refused if k.startswith("unclassified")]
                + [k for k in self.divergences if k.startswith("unexplained")])

    def report(self) -> str:
        lines = [f"scenarios {self.scenarios}, commands {self.commands} (ufw refused {self.ufw_refused}, "
                 f"of which pyxdp would take {sum(self.ufw_refused_pyxdp_takes.values())}), probes compared "
                 f"{self.probes}, verdict differences {sum(self.diffs.values())} "
                 f"(unexplained {len(self.unexplained)})"]
        for title, counter in (("pyxdp refused commands ufw accepts", self.refused),
                               ("rule lists diverged", self.divergences),
                               ("verdict differences", self.diffs),
                               ("ufw refuses, pyxdp takes", self.ufw_refused_pyxdp_takes)):
            lines.append(f"{title}: {sum(counter.values())}")
            lines += [f"  {n:6}  {k}" for k, n in counter.most_common()]
        lines += [f"UNEXPLAINED: {u}" for u in self.unexplained]
        return "\n".join(lines)


# (a phrase of pyxdp's refusal, its documented class)
REFUSAL_CLASSES: tuple[tuple[str, str], ...] = (
    ("no such rule", "delete RULE that is not there: ufw says 'Could not delete non-existent rule', exit 0; "
                     "pyxdp exits 2 (documented)"),
)


class Differ:
    """pyxdp attached once on one pair; ufw in a fresh pair per scenario."""

    def __init__(self, log: Callable[[str], None] = lambda _: None) -> None:
        self.log = log
        self.pin_dir = f"/sys/fs/bpf/pyxdp-t{env.RUN}-ufwdiff"
        self.px = Host("uxp")
        r = pyxdp_run("attach", self.px.pair.vb, "--netns", self.px.pair.b, pin_dir=self.pin_dir)
        if r.returncode:
            self.close()
            raise RuntimeError(f"attach: {r.stderr}")
        self.result = Result()

    def close(self) -> None:
        pyxdp_run("detach", self.px.pair.vb, "--netns", self.px.pair.b, pin_dir=self.pin_dir)
        self.px.close()
        shutil.rmtree(self.pin_dir, ignore_errors=True)

    def scenario(self, seed: int, n: int = 8) -> None:
        rng = random.Random(seed)
        res = self.result
        res.scenarios += 1
        r = pyxdp_run("apply", "-", input='policy = "drop"\nrules = []\n', pin_dir=self.pin_dir)
        assert r.returncode == 0, r.stderr
        host = Host(f"u{seed % 1000}")
        ufw = Ufw(host.pair.b)
        try:
            ufw.run("--force", "enable", check=True)
            self._run(rng, ufw, host)
        finally:
            ufw.close()
            host.close()

    def _run(self, rng: random.Random, ufw: Ufw, host: Host) -> None:
        res = self.result
        typed: list[list[str]] = []
        diverged: str | None = None
        for cmd in make_commands(rng, rng.randint(4, 9)):
            n4, n6 = (len(x) for x in ufw_lists(ufw))
            if cmd[:2] == ["insert", "#"]:  # ufw takes 1 to its count (past the end: refused, 1 in 10 here)
                top = n4 + n6 + (1 if rng.random() < 0.1 else 0)
                cmd = ["insert", str(rng.randint(1, top)), *cmd[2:]] if top else cmd[2:]
            elif cmd == ["delete", "#"]:
                if n4 + n6 == 0:
                    continue
                cmd = ["delete", str(rng.randint(1, n4 + n6))]
            elif cmd == ["delete", "@"]:
                if not typed:
                    continue
                cmd = ["delete", *rng.choice(typed)]
            res.commands += 1
            u = ufw.run("--force", *cmd) if cmd[0] == "delete" else ufw.run(*cmd)
            uout = (u.stdout + u.stderr).strip()
            if u.returncode != 0 or uout.startswith("ERROR"):
                res.ufw_refused += 1
                if cmd[0] in ("allow", "deny", "insert"):
                    try:
                        parse_rule_words(cmd[2:] if cmd[0] == "insert" else cmd)
                        res.ufw_refused_pyxdp_takes[f"{cmd[0]}: {uout.splitlines()[-1][:60]}"] += 1
                    except Exception:  # noqa: BLE001 - both refuse it
                        pass
                self.log(f"  ufw refused: {' '.join(cmd)}: {uout.splitlines()[-1] if uout else ''}")
                continue
            if cmd[0] in ("allow", "deny"):
                typed.append(cmd)
            elif cmd[0] == "insert":
                typed.append(cmd[2:])
            p = pyxdp_run(*pyxdp_words(cmd), pin_dir=self.pin_dir)
            agreed = diverged is None
            lists_agree = per_family(pyxdp_rules(self.pin_dir)) == ufw_lists(ufw)
            if p.returncode != 0:
                cls = self._refusal(cmd, p.stderr)
                res.refused[cls] += 1
                self.log(f"  pyxdp refused: {' '.join(cmd)}: {p.stderr.strip()}")
            if agreed and not lists_agree:
                diverged = self._divergence(cmd, uout, p.returncode, p.stderr)
                res.divergences[diverged] += 1
                self.log(f"  lists diverge at '{' '.join(cmd)}' ({diverged}); ufw said: {uout!r}")
            elif lists_agree:
                diverged = None
        probes = probes_for(rng, [c[2:] if c[0] == "insert" else c for c in typed])
        for i, pr in enumerate(probes):
            pr.tag = 1000 + i
        self.px.reset_counts()
        got_p = self.px.send(probes)
        got_u = host.send(probes)
        res.probes += len(probes)
        for pr in probes:
            a, b = pr.tag in got_u, pr.tag in got_p
            if a == b:
                continue
            if diverged is not None:
                cls = f"knock-on of: {diverged}"
            elif pr.kind in BEFORE:
                cls = BEFORE[pr.kind]
            else:
                cls = "unexplained"
                res.unexplained.append(f"{pr}: ufw {'passes' if a else 'drops'}, pyxdp {'passes' if b else 'drops'};"
                                       f" commands: {typed}")
            res.diffs[cls] += 1

    @staticmethod
    def _refusal(cmd: list[str], err: str) -> str:
        if cmd[0] in ("insert", "delete") and cmd[1].isdigit():
            return f"{cmd[0]} N: ufw numbers IPv4 and IPv6 rules apart (per-family numbering)"
        for phrase, cls in REFUSAL_CLASSES:
            if phrase in err:
                return cls
        return "unclassified: " + err.strip().removeprefix("pyxdp-load: error: ")[:80]

    @staticmethod
    def _divergence(cmd: list[str], uout: str, code: int, err: str) -> str:
        if "Rule updated" in uout:
            return "rule identity: ufw updates a re-typed rule in place ('Rule updated'; pending: grammar branch)"
        if "Skipping" in uout:
            return "rule identity: ufw skips a rule whose match exists ('Skipping ...'; pending: grammar branch)"
        if cmd[0] in ("insert", "delete") and cmd[1].isdigit():
            return f"{cmd[0]} N: ufw numbers IPv4 and IPv6 rules apart (per-family numbering)"
        if code != 0:
            return "pyxdp refused it: " + err.strip().removeprefix("pyxdp-load: error: ")[:80]
        return "unexplained list divergence: " + " ".join(cmd)
