"""``pyxdp-load exporter`` as Prometheus sees it: the exporter runs as its own
process on a free loopback port against a test pin directory, real packets
cross a veth the filter is attached to, and a real HTTP client scrapes it.
The text must parse with prometheus_client's own parser and agree with
``stats --json``, ``list --json`` and ``status --json``."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from helpers.cli import fails, ok, run
from helpers.env import SUDO_VARS, NetPair, needs_root, sh
from helpers.traffic import exchange, sock
from prometheus_client.parser import text_string_to_metric_families

pytestmark = needs_root

BIN = os.path.join(os.path.dirname(sys.executable), "pyxdp-load")
SERVING = re.compile(r"serving .* on (http://\S+/metrics)$")


class Exporter:
    """``pyxdp-load exporter`` in a process of its own; ``url`` once it serves."""

    def __init__(self, pin_dir: str, listen: str = "127.0.0.1:0", *extra: str,
                 command: tuple[str, ...] = ("exporter",)) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PYXDP_PIN_DIR", "PYXDP_DEBUG")}
        self.proc = subprocess.Popen([BIN, "--pin-dir", pin_dir, *command, "--listen", listen, *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self.wait_for(SERVING).group(1)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 30) -> re.Match[str]:
        """The first new stderr line matching ``pattern``."""
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"exporter said nothing like {pattern.pattern!r}: {self.log}") from None
            if line is None:
                raise AssertionError(f"exporter ended ({self.proc.wait()}): {self.log}")
            self.log.append(line)
            m = pattern.search(line)
            if m:
                return m

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=15)
        finally:
            self.proc.kill()


@contextmanager
def exporter(pin_dir: str, listen: str = "127.0.0.1:0", *extra: str) -> Iterator[Exporter]:
    exp = Exporter(pin_dir, listen, *extra)
    try:
        yield exp
    finally:
        exp.proc.kill()
        exp.proc.wait()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> tuple[str, dict[str, Any], Samples]:
    """(the text, family name -> parsed family, (sample name, sorted labels) -> value)."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    return text, fams, samples


def labels(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def pyxdp_series(samples: Samples) -> set[str]:
    return {name for name, _ in samples if name.startswith("pyxdp_")}


def promtool_check(text: str) -> None:
    """Prometheus' linter (Debian's prometheus package) says nothing of ``text``."""
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed: run scripts/setup.sh --test")
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def rule_info(samples: Samples) -> dict[str, dict[str, str]]:
    """Rule id -> the labels of its pyxdp_rule_info series."""
    return {dict(lb)["id"]: dict(lb) for (n, lb), v in samples.items() if n == "pyxdp_rule_info" and v == 1}


def rule_counters(samples: Samples) -> dict[str, float]:
    """Rule id -> its pyxdp_rule_packets_total."""
    return {dict(lb)["id"]: v for (n, lb), v in samples.items() if n == "pyxdp_rule_packets_total"}


def test_metrics_agree_with_the_cli_under_real_traffic(pin_dir: str, netpair: NetPair, tmp_path: Any) -> None:
    ok("attach", netpair.vb, "--netns", netpair.b, pin_dir=pin_dir)
    big = tmp_path / "big.txt"
    big.write_text("".join(f"10.{i >> 8}.{i & 255}.0/24\n" for i in range(5000)))
    ok("set", "add", "big", "--file", str(big), pin_dir=pin_dir)
    ok("set", "add", "blocked", "10.77.0.0/24", "fd77::/64", "192.0.2.0/24", pin_dir=pin_dir)
    ok("deny", "proto", "udp", "from", "@blocked", "to", "any", "port", "7001", pin_dir=pin_dir)
    ok("allow", "proto", "udp", "to", "any", "port", "7002", pin_dir=pin_dir)

    from pyxdp import Filter, Verdict

    with Filter.open(pin_dir, lock=False) as flt:
        drops0 = flt.stats().total(Verdict.DROP)
        got = exchange(netpair, "10.77.0.2", {7001: 30, 7002: 20},
                       settled=lambda rx: flt.stats().total(Verdict.DROP) - drops0 >= 50 - rx)
    assert got == {7001: 0, 7002: 20}
    out = sock(netpair.b)  # the filtered host opens two UDP flows (its egress program counts them)
    for port in (9, 10):
        out.sendto(b"x", ("10.77.0.1", port))
    out.close()

    with exporter(pin_dir) as exp:
        text, fams, first = scrape(exp.url)
        stats = json.loads(ok("stats", "--json", pin_dir=pin_dir))
        rules = [json.loads(x) for x in ok("list", "--json", pin_dir=pin_dir).splitlines()]
        status = json.loads(ok("status", "--json", pin_dir=pin_dir))
        _, _, second = scrape(exp.url)
        assert exp.stop() == 0

    # the format: every family has HELP and TYPE; counters end in _total; names are snake_case
    for name, fam in fams.items():
        if not name.startswith("pyxdp_"):
            continue
        assert re.fullmatch(r"pyxdp_[a-z0-9_]+", name), name
        assert fam.documentation, name
        assert f"# HELP {name}" in text and f"# TYPE {name}" in text, name
        if fam.type == "counter":
            assert all(s.name == name + "_total" for s in fam.samples), name
    assert fams["pyxdp_packets"].type == "counter" and fams["pyxdp_rule_packets"].type == "counter"
    assert fams["pyxdp_set_elements"].type == "gauge"
    assert first[("pyxdp_up", ())] == 1

    # packets and bytes per (interface, verdict, reason): what 'stats --json' says, read between two scrapes
    # (ARP, ND and the like may still trickle in); the rule decisions exactly what was sent
    lines = stats["stats"]
    assert lines
    for ln in lines:
        key = labels(interface=ln.get("interface", ""), verdict=ln["verdict"], reason=ln["reason"])
        for metric, field in (("pyxdp_packets_total", "packets"), ("pyxdp_bytes_total", "bytes")):
            assert first.get((metric, key), 0) <= ln[field] <= second[(metric, key)], (metric, key)
    deny = sum(v for (n, lb), v in first.items() if n == "pyxdp_packets_total" and ("reason", "rule-deny") in lb)
    allow = sum(v for (n, lb), v in first.items() if n == "pyxdp_packets_total" and ("reason", "rule-allow") in lb)
    assert (deny, allow) == (30, 20)
    assert all(("verdict", "drop") in lb for (n, lb) in first if n == "pyxdp_packets_total"
               and ("reason", "rule-deny") in lb)
    assert first[("pyxdp_trace_events_lost_total", ())] == stats["lost_events"] == 0

    # per rule: counters keyed by the stable id alone; number, action and text as 'list' shows them in
    # pyxdp_rule_info (value 1)
    listed = [r for r in rules if "rule" in r]
    assert [r["rule"] for r in listed] == ["deny proto udp from @blocked to any port 7001",
                                           "allow proto udp to any port 7002"]
    info = rule_info(first)
    assert fams["pyxdp_rule_info"].type == "gauge" and all(s.value == 1 for s in fams["pyxdp_rule_info"].samples)
    assert all(lb[0][0] == "id" and len(lb) == 1 for (n, lb) in first if n.startswith("pyxdp_rule_packets"))
    assert sorted(rule_counters(first)) == sorted(info) == ["0", "1"]
    for r in listed:
        [i] = [i for i in info.values() if i["rule"] == str(r["number"])]
        assert i["text"] == r["rule"] and i["action"] == r["rule"].split()[0] and i["comment"] == ""
        assert rule_counters(first)[i["id"]] == r["packets"] == (30 if r["number"] == 1 else 20)
        assert first[("pyxdp_rule_bytes_total", labels(id=i["id"]))] == r["bytes"] > 0
    assert first[("pyxdp_rules", ())] == 2 and first[("pyxdp_rule_capacity", ())] == status["rule_capacity"]
    assert first[("pyxdp_rules_exported", ())] == 2

    # sets: two series each (per family), never one per element
    sets = {(dict(lb)["set"], dict(lb)["family"]): v for (n, lb), v in first.items() if n == "pyxdp_set_elements"}
    assert sets == {("big", "ipv4"): 5000, ("big", "ipv6"): 0, ("blocked", "ipv4"): 2, ("blocked", "ipv6"): 1}
    assert first[("pyxdp_set_element_capacity", ())] == status["set_capacity"]
    assert len([k for k in first if k[0].startswith("pyxdp_")]) < 45

    # connection state: on, the two flows the host opened, the tables' size
    assert first[("pyxdp_connection_state", ())] == 1
    assert first[("pyxdp_flows_opened_total", labels(family="ipv4"))] == 2
    assert first[("pyxdp_flows_opened_total", labels(family="ipv6"))] == 0
    assert first[("pyxdp_flow_capacity", ())] == status["flow_capacity"] == 65536

    # policy, tracing, the attachment (labelled as 'stats' names interfaces)
    assert first[("pyxdp_policy_info", labels(policy="pass"))] == 1
    assert first[("pyxdp_trace_sampling", ())] == 0
    [att] = status["interfaces"]
    where = labels(interface=f"{netpair.b}/{netpair.vb}", netns=netpair.b)
    assert first[("pyxdp_attached_info", labels(interface=f"{netpair.b}/{netpair.vb}", netns=netpair.b,
                                                mode=att["mode"], prog_id=str(att["prog_id"])))] == 1
    assert first[("pyxdp_interface_attached", where)] == 1
    # traffic is labelled with the interface it came in on (or "" when the datapath does not say), named alike
    assert {dict(lb)["interface"] for (n, lb) in first if n == "pyxdp_packets_total"} <= {
        "", f"{netpair.b}/{netpair.vb}"}
    assert 0 < first[("pyxdp_scrape_duration_seconds", ())] < 10
    assert ("process_open_fds", ()) in first  # the exporter's own process metrics

    promtool_check(text)

    # 'insert 1' renumbers the rules: no counter series changes its labels or value, the info series carry
    # the new numbers; --rule-metrics top:1 keeps the rule with the most packets (now number 2), off none
    ok("insert", "1", "deny", "from", "198.51.100.7", "comment", "a scanner", pin_dir=pin_dir)
    with exporter(pin_dir) as exp, exporter(pin_dir, "127.0.0.1:0", "--rule-metrics", "top:1") as top1, \
            exporter(pin_dir, "127.0.0.1:0", "--rule-metrics", "off") as off:
        text, _, after = scrape(exp.url)
        _, _, capped = scrape(top1.url)
        _, _, none = scrape(off.url)
    promtool_check(text)
    [new_id] = set(rule_counters(after)) - set(rule_counters(first))
    assert rule_counters(after) == {**rule_counters(first), new_id: 0}
    inserted = {"id": new_id, "rule": "1", "action": "deny", "text": "deny from 198.51.100.7/32",
                "comment": "a scanner"}
    assert rule_info(after) == {new_id: inserted,
                                **{rid: {**lb, "rule": str(int(lb["rule"]) + 1)} for rid, lb in info.items()}}
    [deny_id] = [rid for rid, lb in info.items() if lb["action"] == "deny"]
    assert rule_counters(capped) == {deny_id: 30} and list(rule_info(capped)) == [deny_id]
    assert capped[("pyxdp_rules", ())] == 3 and capped[("pyxdp_rules_exported", ())] == 1
    assert not rule_counters(none) and not rule_info(none) and none[("pyxdp_rules_exported", ())] == 0
    assert none[("pyxdp_rules", ())] == 3

    ok("detach", netpair.vb, "--netns", netpair.b, pin_dir=pin_dir)


def test_a_new_rule_takes_an_id_no_rule_had(pin_dir: str) -> None:
    """Ids key the rules' series: a rule added after one was deleted does not
    take the deleted rule's id (its series would go on under another text)
    while ids no rule had are left."""
    ok("--create", "allow", "22/tcp", pin_dir=pin_dir)
    ok("allow", "80/tcp", pin_dir=pin_dir)
    ok("allow", "443/tcp", pin_dir=pin_dir)
    from pyxdp import Filter

    with Filter.open(pin_dir, lock=False) as flt:
        ids = {r.text: r.id for r in flt.rule_counts()}
        assert [(r.number, r.id, str(r.rule)) for r in flt.rules()] == [
            (c.number, c.id, c.text) for c in flt.rule_counts()]
    assert sorted(ids.values()) == [0, 1, 2]
    ok("delete", "2", pin_dir=pin_dir)
    ok("allow", "8080/tcp", pin_dir=pin_dir)
    ok("insert", "1", "deny", "from", "192.0.2.1", pin_dir=pin_dir)
    with Filter.open(pin_dir, lock=False) as flt:
        now = {r.text: r.id for r in flt.rule_counts()}
    assert now == {"deny from 192.0.2.1/32": 4, "allow proto tcp to any port 22": ids["allow proto tcp to any port 22"],
                   "allow proto tcp to any port 443": ids["allow proto tcp to any port 443"],
                   "allow proto tcp to any port 8080": 3}
    with exporter(pin_dir) as exp:
        _, _, s = scrape(exp.url)
    assert {i["text"]: (i["rule"], i["id"]) for i in rule_info(s).values()} == {
        t: (str(n), str(now[t])) for n, t in enumerate(["deny from 192.0.2.1/32", "allow proto tcp to any port 22",
                                                         "allow proto tcp to any port 443",
                                                         "allow proto tcp to any port 8080"], 1)}


def test_many_rules_are_read_in_batches_alike(pin_dir: str, tmp_path: Any) -> None:
    """From BATCH_FROM rules on, rule_counts reads ranges of the rule maps in
    batch lookups (Map.array_values): it returns what rules() reads one
    lookup at a time, in either rule generation (the range of the other one
    starts at the capacity), and its top N are the N with the most packets
    (ties: the first in the list). The exporter's answer for all of them
    parses and passes promtool."""
    import struct

    from pyxdp import Filter
    from pyxdp.store.ruleset import BATCH_FROM

    spec = tmp_path / "fw.toml"
    spec.write_text("rules = [\n" + "".join(f'  "deny proto tcp from 10.{i}.0.0/16 to any port {i + 1}",\n'
                                           for i in range(150)) + "]\n")
    ok("--create", "apply", str(spec), pin_dir=pin_dir)
    gens = set()
    for extra in ([], ["insert", "1", "allow", "22/tcp"]):
        if extra:
            ok(*extra, pin_dir=pin_dir)  # the other generation
        with Filter.open(pin_dir) as flt:
            hits = flt.state.map("rhits")
            for r in flt.rules():  # counters as the datapath keeps them: per CPU, some equal
                hits.update(struct.pack("=I", r.id), b"".join(struct.pack("=QQ", r.id * 37 % 50 + cpu, 100 * cpu + 60)
                                                              for cpu in range(hits.value_bytes // 16)))
            gens.add(flt.config().rgen)
            full = flt.rules()
            assert len(full) >= BATCH_FROM
            assert [(c.number, c.id, c.text, c.action, c.packets, c.bytes) for c in flt.rule_counts()] == [
                (r.number, r.id, str(r.rule), r.rule.action, r.packets, r.bytes) for r in full]
            want = sorted(sorted(full, key=lambda r: (-r.packets, r.number))[:10], key=lambda r: r.number)
            assert [(c.number, c.id) for c in flt.rule_counts(10)] == [(r.number, r.id) for r in want]
    assert gens == {0, 1}
    with exporter(pin_dir, "127.0.0.1:0", "--rule-metrics", "all") as exp:
        text, _, s = scrape(exp.url)
    promtool_check(text)
    assert len(rule_info(s)) == len(rule_counters(s)) == s[("pyxdp_rules_exported", ())] == 151
    assert rule_info(s)[str(full[0].id)] == {"id": str(full[0].id), "rule": "1", "action": "allow",
                                             "text": "allow proto tcp to any port 22", "comment": ""}
    assert rule_counters(s)[str(full[0].id)] == full[0].packets


def test_no_state_answers_with_up_0_and_follows_the_state(pin_dir: str) -> None:
    with exporter(pin_dir) as exp:
        assert any("no state" in line for line in exp.log)
        _, _, s = scrape(exp.url)
        assert s[("pyxdp_up", ())] == 0
        assert pyxdp_series(s) == {"pyxdp_up", "pyxdp_scrape_duration_seconds"}

        ok("--create", "deny", "from", "192.0.2.1", pin_dir=pin_dir)  # state made while it runs
        _, _, s = scrape(exp.url)
        assert s[("pyxdp_up", ())] == 1 and s[("pyxdp_rules", ())] == 1
        assert {n for n, _ in s if n.startswith("pyxdp_")} >= {"pyxdp_rule_packets_total", "pyxdp_policy_info"}
        assert ("pyxdp_packets_total", ()) not in s  # no traffic: the family is there, no series yet

        from pyxdp import Filter

        with Filter.open(pin_dir) as flt:
            flt.remove_state()
        _, _, s = scrape(exp.url)
        assert s[("pyxdp_up", ())] == 0 and pyxdp_series(s) == {"pyxdp_up", "pyxdp_scrape_duration_seconds"}
        exp.wait_for(re.compile("no state"))

        ok("--create", "allow", "22/tcp", pin_dir=pin_dir)  # and made again: the new maps are read
        _, _, s = scrape(exp.url)
        assert s[("pyxdp_up", ())] == 1
        assert [i["text"] for i in rule_info(s).values()] == ["allow proto tcp to any port 22"]
        assert exp.stop(signal.SIGINT) == 0
    assert "Traceback" not in "\n".join(exp.log)


def test_set_sizes_never_walk_a_set_under_change(pin_dir: str) -> None:
    """While a change works on a set (here: one killed midway, as the next
    writer finds it) 'set list' counts the visible elements by walking them
    (seconds with a million); a scrape takes the stored tally instead."""
    from pyxdp import Filter
    from pyxdp.cli.exporter import StateCollector
    from pyxdp.layout import JournalOp

    ok("--create", "set", "add", "office", "192.0.2.0/24", "198.51.100.0/24", pin_dir=pin_dir)
    env = {"PYXDP_TEST_KILL_AFTER": ""}
    for n in range(1, 40):
        env["PYXDP_TEST_KILL_AFTER"] = str(n)
        r = run("set", "add", "office", "203.0.113.0/24", "2001:db8::/32", "10.0.0.0/8", pin_dir=pin_dir, env=env,
                drop_env=SUDO_VARS)  # the hook needs root's own environment (conftest.SUDO_VARS)
        if r.returncode == 0:
            raise AssertionError("no point of the change left the set with a tally its visible elements differ from")
        assert r.returncode == -signal.SIGKILL, r.stderr
        with Filter.open(pin_dir, lock=False) as flt:
            op, _txn, _busy = flt.state.journal()
            exact = {s.name: (s.n4, s.n6) for s in flt.sets()}
            tally = {s.name: (s.n4, s.n6) for s in flt.sets(exact=False)}
        if op == JournalOp.SET and exact != tally:
            break
        ok("unban", "192.0.2.1", pin_dir=pin_dir)  # a writer: finishes or undoes the killed change
    assert exact["office"] in ((2, 0), (4, 1)) and tally["office"] != exact["office"]
    families = {m.name: m for m in StateCollector(pin_dir).read()}
    got = {s.labels["family"]: s.value for s in families["pyxdp_set_elements"].samples}
    assert (got["ipv4"], got["ipv6"]) == tally["office"]
    ok("unban", "192.0.2.1", pin_dir=pin_dir)  # recovered: tally and walk agree again
    with Filter.open(pin_dir, lock=False) as flt:
        assert flt.sets() == flt.sets(exact=False)


def test_listens_only_where_told(pin_dir: str) -> None:
    ok("--create", "deny", "from", "192.0.2.1", pin_dir=pin_dir)
    with exporter(pin_dir) as exp:
        port = int(exp.url.rsplit(":", 1)[1].split("/")[0])
        assert exp.url.startswith("http://127.0.0.1:")
        with pytest.raises(urllib.error.URLError):  # another loopback address: nobody listens there
            urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=5)
        assert scrape(exp.url)[2][("pyxdp_up", ())] == 1
        assert exp.stop() == 0
    with exporter(pin_dir, "[::1]:0") as exp:
        assert exp.url.startswith("http://[::1]:")
        assert scrape(exp.url)[2][("pyxdp_up", ())] == 1
        assert exp.stop() == 0


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_idle_clients_cost_no_thread_and_a_scrape_still_answers(pin_dir: str) -> None:
    """Issue 19 (7): 200 clients that connect and say nothing (it took one
    thread each, with no timeout): the exporter's threads stay few, a scrape
    is answered meanwhile, and the listen backlog is 128 (it was 5)."""
    from pyxdp.cli.exporter import BACKLOG, WORKERS

    ok("--create", "deny", "from", "192.0.2.1", pin_dir=pin_dir)
    with exporter(pin_dir) as exp:
        port = int(exp.url.rsplit(":", 1)[1].split("/")[0])
        listening = sh("ss", "-Hltn", f"sport = :{port}").stdout.split()
        assert listening[:3] == ["LISTEN", "0", str(BACKLOG)], listening
        before = _threads(exp.proc.pid)
        idle = []
        try:
            for _ in range(200):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            assert scrape(exp.url)[2][("pyxdp_up", ())] == 1  # accepted after the 200
            assert _threads(exp.proc.pid) <= before + WORKERS, (before, _threads(exp.proc.pid))
            assert scrape(exp.url)[2][("pyxdp_up", ())] == 1
        finally:
            for c in idle:
                c.close()
        assert exp.stop() == 0


def test_idle_and_stalled_connections_are_closed_after_the_timeout(pin_dir: str) -> None:
    """A connection that sends nothing, or half a request, is closed after
    the idle timeout (here 0.5 s); a scrape is answered meanwhile."""
    from pyxdp.cli.exporter import StateCollector, make_server

    server = make_server(StateCollector(pin_dir), "127.0.0.1", 0, idle=0.5)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_port
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
        stalled.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
        assert scrape(f"http://127.0.0.1:{port}/metrics")[2][("pyxdp_up", ())] == 0  # no state there
        for c in (silent, stalled):
            with c:
                assert c.recv(65536) == b""  # closed (waits 10 s at most)
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def test_bad_listen_and_busy_port(pin_dir: str) -> None:
    for bad in ("nonsense", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999", "localhost:9436", "::1:9436",
                ":9436", "127.0.0.1:port", "127.0.0.1:٩٤٣٦"):
        fails(2, "bad --listen", "exporter", "--listen", bad, pin_dir=pin_dir)
    for bad in ("some", "top", "top:", "top:0", "top:-1", "top:x", "all:3", "TOP:3"):
        fails(2, "bad --rule-metrics", "exporter", "--rule-metrics", bad, pin_dir=pin_dir)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        fails(1, f"cannot listen on 127.0.0.1:{port}: address already in use", "exporter", "--listen",
              f"127.0.0.1:{port}", pin_dir=pin_dir)
    fails(1, "cannot listen on 192.0.2.1:9436", "exporter", "--listen", "192.0.2.1:9436", pin_dir=pin_dir)


def test_unreadable_state_and_missing_library(pin_dir: str) -> None:
    ok("--create", "deny", "from", "192.0.2.1", pin_dir=pin_dir)
    fails(1, "needs root", "exporter", "--listen", "127.0.0.1:0", pin_dir=pin_dir, no_caps=True)
    code = ("import sys; sys.modules['prometheus_client'] = None; from pyxdp.cli import main; "
            f"sys.exit(main(['--pin-dir', {pin_dir!r}, 'exporter']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == ("pyxdp-load: error: this command needs prometheus_client: "
                                "pip install 'pyxdp[exporter]' (or prometheus_client itself)")
    assert run("status", pin_dir=pin_dir).returncode == 0  # nothing else needs it
