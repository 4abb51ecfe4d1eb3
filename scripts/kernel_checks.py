"""What scripts/kernels.sh runs inside each guest kernel, as root, with the
tree under test first on PYTHONPATH (one step per call; exit 1 and a line
"FAILED: ..." when a check fails):

    kernel_checks.py programs        every program of the object (xdp_filter, xdp_filter_fast with its
                                     fast paths on, sweep_start, egress) verified on its own; which
                                     libbpf.so.1 the process loaded
    kernel_checks.py load [RULES]    Filter.open(create=True, with_program=True), then close()
    kernel_checks.py replay          a pcap with known verdicts replayed (BPF_PROG_TEST_RUN)
    kernel_checks.py native          two namespaces joined by a veth; `pyxdp-load attach --mode native`
                                     on the receiving end; real UDP packets: a rule drops, a ban drops,
                                     the policy drops, allowed ones arrive (IPv4 and IPv6)
    kernel_checks.py trace           `pyxdp-load trace --count N --json --pcap F` while packets are sent:
                                     the ring buffer's events, and the packets' first bytes
    kernel_checks.py conntrack       the egress (tc) program beside the filter, policy drop: TCP
                                     connections the receiving namespace opens to the peer succeed
                                     (connection state), not with connection state off, and the peer
                                     cannot connect in; then detach and remove everything

native leaves its namespaces and attached filter for trace and conntrack;
conntrack removes them (and `cleanup` does, whatever is left). Runs on the
host too (PXK_TAG names the namespaces and the pin directory)."""

from __future__ import annotations

import ctypes
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time

import pyxdp
from pyxdp import Reason as R
from pyxdp import Verdict as V
from pyxdp.model.pcap import read_pcap, write_pcap

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(pyxdp.__file__))), "tests"))
from helpers.netio import Echo, netns  # noqa: E402  (the tree's tests/: one netns helper and echo server for all)

TAG = os.environ.get("PXK_TAG", "pxk")
NS_A, NS_B = f"{TAG}a", f"{TAG}b"  # a: the rest of the world; b: the host the filter guards
VA, VB = "va", "vb"
A4, A4_BANNED, B4, A6, B6 = "10.88.0.1", "10.88.0.3", "10.88.0.2", "fd88::1", "fd88::2"
PIN = f"/sys/fs/bpf/{TAG}-net"
CLI = os.path.join(os.path.dirname(sys.executable), "pyxdp-load")
PROGRAMS = ("xdp_filter", "xdp_filter_fast", "sweep_start", "egress")
COUNT = 20  # datagrams per case
PAYLOAD = b"pyxdp-kernels "


def fail(msg: str) -> None:
    print(f"FAILED: {msg}", flush=True)
    sys.exit(1)


def expect(cond: bool, msg: str) -> None:
    if not cond:
        fail(msg)
    print(f"ok: {msg}", flush=True)


def sh(*cmd: str, check: bool = True) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        fail(f"{' '.join(cmd)}: exit {r.returncode}: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """pyxdp-load from the venv, on this check's pin directory."""
    t = time.monotonic()
    r = subprocess.run([CLI, "--pin-dir", PIN, *args], capture_output=True, text=True, timeout=120)
    out = (r.stdout.strip().splitlines() or [""])[0] if args[-1] != "--json" else ""
    print(f"$ pyxdp-load {' '.join(args)}: exit {r.returncode} ({time.monotonic() - t:.1f} s) {out}", flush=True)
    if check and r.returncode != 0:
        fail(f"pyxdp-load {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def sock(ns: str, addr: str, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    with netns(ns):
        s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, kind)
    return s


def stats() -> dict[tuple[str, str], int]:
    """Packets per (verdict, reason), over all interfaces (pyxdp-load stats --json)."""
    out: dict[tuple[str, str], int] = {}
    for ln in json.loads(cli("stats", "--json").stdout)["stats"]:
        k = (ln["verdict"], ln["reason"])
        out[k] = out.get(k, 0) + ln["packets"]
    return out


def send(src: str, dst: str, port: int, n: int, tag: str = "") -> None:
    s = sock(NS_A, src)
    with s:
        s.bind((src, 0))
        for i in range(n):
            s.sendto(PAYLOAD + f"{tag}{port} {i}".encode(), (dst, port))
            time.sleep(0.002)


# ---- programs, load, replay --------------------------------------------------------------------


def libbpf_loaded() -> str:
    """The libbpf.so.1 file this process mapped, and the version it reports."""
    from pyxdp.kernel.libbpf import _load

    _load()  # dlopen, as the first libbpf call does
    with open("/proc/self/maps") as fh:
        paths = {ln.split()[-1] for ln in fh if "libbpf.so" in ln}
    if len(paths) != 1:
        fail(f"libbpf mapped: {sorted(paths) or 'none'}")
    path = paths.pop()
    c = ctypes.CDLL(path)  # the same mapping: dlopen returns the loaded one
    c.libbpf_version_string.restype = ctypes.c_char_p
    return f"{os.path.realpath(path)} ({c.libbpf_version_string().decode()})"


def programs() -> None:
    from pyxdp import layout as L
    from pyxdp.kernel.bpf import BpfObject
    from pyxdp.store.objects import FAST_PROG, OBJECT_PATH

    where = libbpf_loaded()
    print(f"@@LIBBPF {where}", flush=True)
    wanted = os.environ.get("PYXDP_LIBBPF")
    if wanted and not where.startswith(os.path.realpath(wanted) + " "):
        fail(f"PYXDP_LIBBPF={wanted} but loaded {where}")
    with BpfObject(OBJECT_PATH) as obj:
        names = obj.program_names
    bad = 0
    for name in PROGRAMS:
        if name not in names:
            print(f"FAILED: program {name} is not in {OBJECT_PATH} (has {', '.join(names)})")
            bad += 1
    for name in names:
        try:
            with BpfObject(OBJECT_PATH) as obj:
                for m in obj.map_names:  # private: never pinned at the bpffs root (run on a host too)
                    obj.private_map(m)
                obj.only_program(name)
                if name == FAST_PROG:  # with its fast paths on (the verifier prunes what knobs turn off)
                    shape = L.Shape.BAN_FIRST | L.Shape.PORT_RULES
                    obj.set_rodata(L.KNOBS.pack(0, 1, L.DEFAULT_RULE_WORDS, int(shape)))
                obj.load()
            print(f"program {name}: loaded")
        except pyxdp.VerifierError as e:
            bad += 1
            print(f"program {name}: VerifierError: {e.cause()}")
            print("\n".join("    " + ln for ln in e.log.rstrip().splitlines()[-6:]))
        except pyxdp.PyxdpError as e:
            bad += 1
            print(f"program {name}: {type(e).__name__}: {e}")
    sys.exit(1 if bad else 0)


def load(rules: int | None) -> None:
    pin = "/sys/fs/bpf/k" + (str(rules) if rules else "")
    try:
        f = pyxdp.Filter.open(pin, create=True, with_program=True, rules=rules)
    except pyxdp.VerifierError as e:
        print(f"{type(e).__name__}: {e}")
        print("verifier log, last 12 lines:")
        print("\n".join("    " + ln for ln in e.log.rstrip().splitlines()[-12:]))
        sys.exit(1)
    f.close()
    shutil.rmtree(pin, ignore_errors=True)
    print("loaded", pin, "rules", rules or "default")


def replay() -> None:
    from helpers import packets as P

    cases = [  # packet, expected verdict, expected reason
        (P.tcp4("192.0.2.5", 22), V.PASS, R.RULE_ALLOW),
        (P.tcp4("198.51.100.9", 22), V.DROP, R.RULE_DENY),
        (P.udp4("203.0.113.7", 53), V.DROP, R.RULE_DENY),  # banned
        (P.tcp4("198.51.100.9", 443), V.PASS, R.RULE_ALLOW),
        (P.tcp4("198.51.100.9", 8080), V.DROP, R.POLICY),
        (P.eth(P.ETH_ARP, P.arp()), V.PASS, R.ARP),
        (P.eth(P.ETH_IP, b"\x45\x00"), V.DROP, R.MALFORMED),
        (P.tcp6("2001:db8::1", 22), V.DROP, R.RULE_DENY),
        (P.udp6("2001:db8::1", 53), V.DROP, R.POLICY),
    ]
    with open("/tmp/replay.pcap", "wb") as out:
        write_pcap(out, [c[0] for c in cases])
    f = pyxdp.Filter.open("/sys/fs/bpf/replay", create=True, with_program=True)
    f.add_rule("allow proto tcp from 192.0.2.0/24 to any port 22")
    f.add_rule("deny 22/tcp")
    f.add_rule("allow 80,443/tcp")
    f.set_policy(V.DROP)
    f.ban(["203.0.113.7"], ttl=600)
    with open("/tmp/replay.pcap", "rb") as inp:
        got = list(f.replay(read_pcap(inp)))
    f.close()
    bad = 0
    for (_, ev, er), r in zip(cases, got):
        good = (r.verdict, r.reason) == (ev, er)
        bad += not good
        print(f"packet {r.number}: {r.verdict.label}/{r.reason.label} expected {ev.label}/{er.label} "
              f"{'ok' if good else 'MISMATCH'}")
    if len(got) != len(cases):
        print(f"MISMATCH: {len(got)} results for {len(cases)} packets")
        bad += 1
    print(f"replay: {len(cases) - bad}/{len(cases)} verdicts as expected")
    if bad:
        fail("replay verdicts differ")


# ---- real packets --------------------------------------------------------------------------------


def cleanup() -> None:
    for ns in (NS_A, NS_B):
        sh("ip", "netns", "del", ns, check=False)
    shutil.rmtree(PIN, ignore_errors=True)


def xdp_mode() -> int | None:
    """ip's XDP attach mode of vb: 1 native (driver), 2 generic (skb); None: none."""
    [info] = json.loads(sh("ip", "-d", "-j", "-n", NS_B, "link", "show", VB))
    return (info.get("xdp") or {}).get("mode")


def native() -> None:
    cleanup()
    for ns in (NS_A, NS_B):
        sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", f"{TAG}tmp0", "netns", NS_A, "type", "veth", "peer", "name", f"{TAG}tmp1", "netns", NS_B)
    sh("ip", "-n", NS_A, "link", "set", f"{TAG}tmp0", "name", VA)
    sh("ip", "-n", NS_B, "link", "set", f"{TAG}tmp1", "name", VB)
    for ns, dev, addrs in ((NS_A, VA, (f"{A4}/24", f"{A4_BANNED}/24", f"{A6}/64")),
                           (NS_B, VB, (f"{B4}/24", f"{B6}/64"))):
        for a in addrs:
            sh("ip", "-n", ns, "addr", "add", a, "dev", dev, *(("nodad",) if ":" in a else ()))
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    cli("attach", VB, "--netns", NS_B, "--mode", "native")
    expect(xdp_mode() == 1, f"ip link: XDP on {VB} in native (driver) mode")
    for words in (["allow", "5001/udp"], ["deny", "5002/udp"], ["allow", "5003/udp"], ["policy", "drop"],
                  ["ban", A4_BANNED, "--ttl", "10m"]):
        cli(*words)
    rules = [json.loads(ln)["rule"] for ln in cli("list", "--json").stdout.splitlines() if '"rule"' in ln]
    print("rules:", rules, flush=True)
    expect(len(rules) == 4 and rules[0].startswith("deny from @"), "the ban is rule 1, before the three rules")
    rx = {}
    for port, fam in ((5001, 4), (5002, 4), (5003, 4), (5004, 4), (5001, 6)):
        s = sock(NS_B, B6 if fam == 6 else B4)
        s.bind((B6 if fam == 6 else B4, port))
        s.setblocking(False)
        rx[s] = (port, fam)
    before = stats()
    send(A4, B4, 5001, COUNT)        # allowed
    send(A4, B4, 5002, COUNT)        # a rule drops
    send(A4_BANNED, B4, 5003, COUNT)  # allowed by rule 4, but banned (rule 1)
    send(A4, B4, 5004, COUNT)        # no rule: the policy drops
    send(A6, B6, 5001, COUNT)        # allowed, IPv6
    got = {v: 0 for v in rx.values()}

    def drain(s: socket.socket) -> None:
        while True:
            try:
                s.recv(2048)
            except BlockingIOError:
                return
            got[rx[s]] += 1

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (got[(5001, 4)] < COUNT or got[(5001, 6)] < COUNT):
        ready, _, _ = select.select(list(rx), [], [], 0.2)
        for s in ready:
            drain(s)
    time.sleep(0.3)
    for s in rx:  # stragglers
        drain(s)
        s.close()
    print("received per (port, family):", got, flush=True)
    after = stats()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    print("counted meanwhile:", delta, flush=True)
    expect(got[(5001, 4)] == COUNT and got[(5001, 6)] == COUNT,
           f"allowed: {COUNT} of {COUNT} arrived over IPv4 and IPv6")
    expect(got[(5002, 4)] == 0 and got[(5003, 4)] == 0 and got[(5004, 4)] == 0,
           "denied, banned and policy-dropped: none arrived")
    expect(delta.get(("pass", "rule-allow"), 0) == 2 * COUNT, f"pass/rule-allow counted {2 * COUNT}")
    expect(delta.get(("drop", "rule-deny"), 0) == 2 * COUNT, f"drop/rule-deny counted {2 * COUNT} (rule and ban)")
    expect(delta.get(("drop", "policy"), 0) >= COUNT, f"drop/policy counted at least {COUNT}")
    hits = {r["number"]: r["packets"] for r in
            (json.loads(ln) for ln in cli("list", "--json").stdout.splitlines() if '"rule"' in ln)}
    expect(hits.get(1) == COUNT and hits.get(3) == COUNT and hits.get(4) == 0,
           f"rule hits: ban {hits.get(1)}, deny 5002/udp {hits.get(3)}, allow 5003/udp {hits.get(4)}")


def trace() -> None:
    if not os.path.isdir(PIN):
        fail(f"no state at {PIN}: the native step did not leave its filter")
    n = 8
    cap = "/tmp/pxk-trace.pcap"
    p = subprocess.Popen([CLI, "--pin-dir", PIN, "trace", "--count", str(n), "--json", "--port", "5001,5002",
                          "--pcap", cap], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    i = 0
    while p.poll() is None and time.monotonic() < deadline:
        send(A4, B4, 5001 + i % 2, 1, tag="trace ")
        i += 1
        time.sleep(0.2)
    if p.poll() is None:
        p.terminate()
    out, err = p.communicate(timeout=30)
    print(f"$ pyxdp-load trace --count {n} --json --port 5001,5002 --pcap {cap}: exit {p.returncode}, "
          f"{i} datagrams sent", flush=True)
    if p.returncode != 0:
        fail(f"trace: exit {p.returncode}: {err.strip()}")
    events = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
    for ev in events[:3]:
        print("  ", ev)
    expect(len(events) == n, f"{n} events")
    want = {5001: ("pass", "rule-allow", 2), 5002: ("drop", "rule-deny", 3)}
    good = [ev for ev in events if ev["src"] == A4 and ev["dst"] == B4 and ev["proto"] == "udp"
            and want.get(ev["dport"]) == (ev["verdict"], ev["reason"], ev["rule"]) and VB in (ev["interface"] or "")]
    expect(len(good) == n, "each: udp 10.88.0.1 -> 10.88.0.2 on vb, verdict, reason and rule as the rules say")
    expect({ev["dport"] for ev in events} == {5001, 5002}, "both ports traced")
    with open(cap, "rb") as fh:
        heads = list(read_pcap(fh))
    os.unlink(cap)
    expect(len(heads) == n and all(PAYLOAD + b"trace " in h for h in heads),
           f"--pcap: {len(heads)} packets, each with its datagram's bytes (bpf_xdp_load_bytes)")
    st = json.loads(cli("status", "--json").stdout)
    expect(st["trace_every"] == 0, "tracing is off again after trace exits")


def connect(ns: str, addr: str, port: int, timeout: float) -> socket.socket | None:
    c = sock(ns, addr, socket.SOCK_STREAM)
    c.settimeout(timeout)
    try:
        c.connect((addr, port))
    except OSError as e:
        print(f"  connect {addr} port {port} from {ns}: {e}", flush=True)
        c.close()
        return None
    return c


def conntrack() -> None:
    if not os.path.isdir(PIN):
        fail(f"no state at {PIN}: the native step did not leave its filter")
    tc = sh("tc", "-n", NS_B, "filter", "show", "dev", VB, "egress")
    expect("pyxdp_egress" in tc, f"tc: the egress program on {VB} ({' '.join(tc.split()[:12])} ...)")
    st = json.loads(cli("status", "--json").stdout)
    expect(st["policy"] == "drop" and st["established"] is True, "policy drop, connection state on")
    servers = [Echo(NS_A, A4, 7000), Echo(NS_A, A6, 7000)]
    inbound = Echo(NS_B, B4, 7001)
    try:
        cli("state", "off")
        c = connect(NS_B, A4, 7000, 3)
        expect(c is None, "connection state off: the peer's SYN-ACK is dropped by the policy, no connection")
        cli("state", "on")
        blob = bytes(range(256)) * 256  # 64 KiB, many segments each way
        for peer in (A4, A6):
            c = connect(NS_B, peer, 7000, 10)
            expect(c is not None, f"connection state on: {NS_B} connects to {peer} port 7000")
            assert c is not None
            with c:
                c.sendall(blob)
                got = b""
                while len(got) < len(blob):
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                expect(got == blob, f"  {len(blob)} bytes echoed back over {peer}")
                flows = json.loads(cli("flows", "--json").stdout)["flows"]
                mine = [f for f in flows if f["proto"] == "tcp" and f["remote"].endswith(":7000")
                        and peer in f["remote"] and f["state"] == "established"]
                expect(len(mine) == 1, f"  flows: {mine[0] if mine else flows}")
        c = connect(NS_A, B4, 7001, 2)
        expect(c is None and inbound.accepted == 0, "the peer cannot connect in (no rule allows 7001/tcp)")
    finally:
        for s in (*servers, inbound):
            s.close()
    counts = stats()
    expect(counts.get(("pass", "established"), 0) > 20,
           f"pass/established counted {counts.get(('pass', 'established'))}")
    out = cli("detach", VB, "--netns", NS_B).stdout
    expect("state removed" in out, "detach: the last interface, state removed")
    expect(xdp_mode() is None, f"no XDP program on {VB} any more")
    expect("pyxdp_egress" not in sh("tc", "-n", NS_B, "filter", "show", "dev", VB, "egress"),
           "no egress program either")
    expect(not os.path.exists(PIN), f"{PIN} removed")
    cleanup()


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "programs":
        programs()
    elif what == "load":
        load(int(sys.argv[2]) if len(sys.argv) > 2 else None)
    elif what == "replay":
        replay()
    elif what == "native":
        native()
    elif what == "trace":
        trace()
    elif what == "conntrack":
        conntrack()
    elif what == "cleanup":
        cleanup()
    else:
        fail(f"unknown step {what}")
