"""``pyxdp-load agent`` end to end: it runs as its own process against a test
pin directory and a config directory laid out as Kubernetes mounts a
ConfigMap (``pyxdp.toml`` -> ``..data/pyxdp.toml``, ``..data`` -> a
timestamped directory, swapped by renaming a new symlink over ``..data``);
real datagrams cross a veth in the test's own namespaces."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from helpers.cli import fails, ok
from helpers.env import NetPair, needs_root, sh
from helpers.traffic import exchange

from kernel.test_exporter import BIN, Exporter, scrape
from pyxdp import Filter
from pyxdp.agent import generation

pytestmark = needs_root

READY = re.compile(r"running generation (\w+)")


class ConfigMap:
    """A config directory as the kubelet writes a ConfigMap volume."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.n = 0
        os.makedirs(path)
        os.symlink("..data/pyxdp.toml", os.path.join(path, "pyxdp.toml"))

    @property
    def file(self) -> str:
        return os.path.join(self.path, "pyxdp.toml")

    def write(self, text: str) -> str:
        """A new timestamped directory, then ..data swapped to it in one rename; returns the generation."""
        self.n += 1
        d = f"..2026_12_08_00_00_{self.n:02d}.{os.getpid()}"
        os.mkdir(os.path.join(self.path, d))
        with open(os.path.join(self.path, d, "pyxdp.toml"), "w", encoding="utf-8") as fh:
            fh.write(text)
        os.symlink(d, os.path.join(self.path, "..data_tmp"))
        os.rename(os.path.join(self.path, "..data_tmp"), os.path.join(self.path, "..data"))
        return generation(text)


def config(pair: NetPair, rules: str, iface: str = "vb") -> str:
    mode = "native" if iface == "vb" else "generic"  # the late interface runs generic XDP
    return (f'policy = "pass"\nestablished = "off"\nrules = [{rules}]\n\n'
            f'[[interface]]\nname = "{iface}"\nnetns = "{pair.b}"\nmode = "{mode}"\n')


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode().strip()


def wait_until(agent: Exporter, check: str, want: tuple[int, str], timeout: float = 20) -> None:
    """Poll ``check`` (healthz/readyz) until it answers ``want`` (status, start of the text)."""
    import time

    base = agent.url.removesuffix("/metrics")
    deadline = time.monotonic() + timeout
    got = (0, "")
    while time.monotonic() < deadline:
        got = get(f"{base}/{check}")
        if got[0] == want[0] and got[1].startswith(want[1]):
            return
        time.sleep(0.1)
    raise AssertionError(f"/{check} answered {got}, not {want}; log: {agent.log}")


@contextmanager
def agent(pin_dir: str, cfg: str, *extra: str) -> Iterator[Exporter]:
    a = Exporter(pin_dir, command=("agent", "--config", cfg, "--interval", "0.2", "--retry", "0.5", "--node",
                                   "node-a", *extra))
    try:
        yield a
    finally:
        a.proc.kill()
        a.proc.wait()


def rest(a: Exporter) -> list[str]:
    """Every line the agent wrote, once it ended."""
    while (line := a._lines.get(timeout=10)) is not None:
        a.log.append(line)
    return a.log


def arrived(pair: NetPair) -> dict[int, int]:
    return exchange(pair, "10.77.0.2", {5001: 20, 5002: 20})


def test_agent_follows_a_configmap_keeps_the_last_good_file_and_leaves_the_filter_on_sigterm(
        pin_dir: str, netpair: NetPair, tmp_path: os.PathLike[str]) -> None:
    cm = ConfigMap(os.path.join(str(tmp_path), "cm"))
    gen_a = cm.write(config(netpair, '"deny 5001/udp"'))
    with agent(pin_dir, cm.file, "--watch") as a:
        wait_until(a, "readyz", (200, f"ready: generation {gen_a}"))
        assert get(a.url.removesuffix("/metrics") + "/healthz") == (200, "ok")
        assert arrived(netpair) == {5001: 0, 5002: 20}

        gen_b = cm.write(config(netpair, '"deny 5002/udp"'))  # the kubelet's update: ..data swapped
        wait_until(a, "readyz", (200, f"ready: generation {gen_b}"))
        assert arrived(netpair) == {5001: 20, 5002: 0}

        gen_c = cm.write(config(netpair, '"deny 5003/udp", "frobnicate"'))  # a bad file: refused, B runs on
        wait_until(a, "readyz", (503, "not ready: refused"))
        status, text = get(a.url.removesuffix("/metrics") + "/readyz")
        assert gen_c in text and f"keeping generation {gen_b}" in text, text
        assert arrived(netpair) == {5001: 20, 5002: 0}
        _, _, samples = scrape(a.url)
        info = [labels for (name, labels), v in samples.items() if name == "pyxdp_agent_config_info" and v == 1]
        assert info == [(("file_generation", gen_c), ("generation", gen_b), ("node", "node-a"))]
        assert samples[("pyxdp_agent_ready", (("node", "node-a"),))] == 0
        assert samples[("pyxdp_agent_config_reloads_total", (("node", "node-a"),))] == 2
        assert samples[("pyxdp_agent_config_failures_total", (("node", "node-a"),))] >= 1

        assert a.stop(signal.SIGTERM) == 0  # a pod's stop, or an upgrade: the filter stays on
    assert any("the filter stays attached" in ln for ln in rest(a)), a.log
    with Filter.open(pin_dir, lock=False) as flt:
        assert [(i.ifname, i.attached) for i in flt.interfaces()] == [("vb", True)]
    assert arrived(netpair) == {5001: 20, 5002: 0}
    ok("detach", "vb", "--netns", netpair.b, pin_dir=pin_dir)


def test_agent_attaches_an_interface_that_appears_later(pin_dir: str, netpair: NetPair,
                                                         tmp_path: os.PathLike[str]) -> None:
    cm = ConfigMap(os.path.join(str(tmp_path), "cm"))
    gen = cm.write(config(netpair, '"deny 5001/udp"', iface="vlate"))
    with agent(pin_dir, cm.file, "--watch") as a:
        wait_until(a, "readyz", (503, "not ready: cannot bring in"))
        assert "vlate" in get(a.url.removesuffix("/metrics") + "/readyz")[1]
        sh("ip", "-n", netpair.b, "link", "add", "vlate", "type", "veth", "peer", "name", "vlatep")
        wait_until(a, "readyz", (200, f"ready: generation {gen}"))
        with Filter.open(pin_dir, lock=False) as flt:
            assert [(i.ifname, i.attached) for i in flt.interfaces()] == [("vlate", True)]
        assert a.stop(signal.SIGINT) == 0
    ok("detach", "vlate", "--netns", netpair.b, pin_dir=pin_dir)


def test_agent_without_watch_never_applies_the_file_but_attaches_a_recorded_interface_that_came_back(
        pin_dir: str, netpair: NetPair, tmp_path: os.PathLike[str]) -> None:
    sh("ip", "-n", netpair.b, "link", "add", "vlate", "type", "veth", "peer", "name", "vlatep")
    ok("attach", "vlate", "--netns", netpair.b, "--mode", "generic", pin_dir=pin_dir)
    ok("deny", "5001/udp", pin_dir=pin_dir)
    cm = ConfigMap(os.path.join(str(tmp_path), "cm"))
    cm.write(config(netpair, '"deny 5002/udp"', iface="vlate"))
    with agent(pin_dir, cm.file, "--detach-on-exit") as a:
        wait_until(a, "readyz", (200, "ready"))
        sh("ip", "-n", netpair.b, "link", "del", "vlate")
        wait_until(a, "readyz", (503, "not ready: the filter does not run on every interface"))
        sh("ip", "-n", netpair.b, "link", "add", "vlate", "type", "veth", "peer", "name", "vlatep")
        a.wait_for(re.compile(r"attached to vlate again: generic mode"))
        wait_until(a, "readyz", (200, "ready"))
        assert a.stop(signal.SIGTERM) == 0
    assert any("detached from vlate" in ln for ln in rest(a)), a.log
    with Filter.open(pin_dir, lock=False) as flt:
        assert [str(r.rule) for r in flt.rules()] == ["deny proto udp to any port 5001"]  # the file was never applied
        assert not [i for i in flt.interfaces() if i.attached]


def test_agent_refuses_bad_options(pin_dir: str) -> None:
    fails(2, "--interval must be", "agent", "--interval", "0", pin_dir=pin_dir)
    fails(2, "--retry must be at least --interval", "agent", "--interval", "2", "--retry", "1", pin_dir=pin_dir)
    fails(2, "bad --listen", "agent", "--listen", "nowhere", pin_dir=pin_dir)


def test_agent_runs_the_files_rules_on_the_interfaces_of_this_node(pin_dir: str, netpair: NetPair,
                                                                   tmp_path: os.PathLike[str]) -> None:
    """--interfaces: the node's own interfaces (a pattern, the default route's) instead of the file's
    [[interface]] tables; the agent runs in namespace b (nsenter keeps the mounts, so the pins stay)."""
    sh("ip", "-n", netpair.b, "route", "add", "default", "via", "10.77.0.1")
    sh("ip", "-n", netpair.b, "link", "add", "vx1", "type", "veth", "peer", "name", "wx1")
    cm = ConfigMap(os.path.join(str(tmp_path), "cm"))
    gen = cm.write(config(netpair, '"deny 5001/udp"', iface="elsewhere"))  # the file's interface is ignored
    nsenter = ("nsenter", f"--net=/run/netns/{netpair.b}")
    proc = subprocess.Popen([*nsenter, BIN, "--pin-dir", pin_dir, "agent", "--config", cm.file, "--watch",
                             "--interfaces", "default-route,vx*", "--listen", "off", "--interval", "0.2"],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if f"running generation {gen}" in line:
                break
        assert any("attached to vb: auto" in ln or "attached to vb:" in ln for ln in lines), lines
        assert any("attached to vx1:" in ln for ln in lines), lines
        assert arrived(netpair) == {5001: 0, 5002: 20}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
        proc.wait()
    for dev in ("vb", "vx1"):
        assert "xdp" in sh("ip", "-n", netpair.b, "link", "show", dev).stdout  # still on after SIGTERM
        sh(*nsenter, BIN, "--pin-dir", pin_dir, "detach", dev, "--keep")
