"""``pyxdp-load agent``: the long-running part (:mod:`pyxdp.agent`) with the
exporter's HTTP server, ``/healthz`` and ``/readyz`` beside ``/metrics``."""

from __future__ import annotations

import os
import socket
import sys
import time

from .common import needs, pin_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.core import Metric

    from ..agent import Agent
    from .spec import Args


class AgentCollector:
    """The agent's own series: which config generation runs on this node,
    whether it is ready, how many reloads and failures it had."""

    def __init__(self, agent: Agent, node: str) -> None:
        self.agent = agent
        self.node = node

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        s = self.agent.status()
        info = InfoMetricFamily("pyxdp_agent_config", "The config file generation (12 hex digits of its SHA-256) the "
                                "agent runs, and the one the file has now, on this node.",
                                labels=("node", "generation", "file_generation"))
        info.add_metric((self.node, s.generation or "", s.file_generation or ""), {})
        yield info
        ready = GaugeMetricFamily("pyxdp_agent_ready", "1 when the firewall runs the config file's generation on "
                                  "every interface it names.", labels=("node",))
        ready.add_metric((self.node,), int(s.ready))
        yield ready
        reloads = CounterMetricFamily("pyxdp_agent_config_reloads", "Changes of the config file the agent brought "
                                      "in.", labels=("node",))
        reloads.add_metric((self.node,), s.reloads)
        yield reloads
        fails = CounterMetricFamily("pyxdp_agent_config_failures", "Attempts to bring the config file in that "
                                    "failed (a bad file, a refused or failed change).", labels=("node",))
        fails.add_metric((self.node,), s.failures)
        yield fails


def health(agent: Agent) -> tuple[int, str]:
    """/healthz: the agent's loop passed lately."""
    s = agent.status()
    late = max(3 * agent.interval, 10.0)
    age = time.monotonic() - s.last_pass
    if s.last_pass and age <= late:
        return 200, "ok"
    return 503, "the agent's loop has not passed yet" if not s.last_pass else \
        f"the agent's loop has not passed for {age:.0f} s"


def readiness(agent: Agent) -> tuple[int, str]:
    """/readyz: the firewall runs the file's generation on every interface it names."""
    s = agent.status()
    if s.ready:
        return 200, f"ready: generation {s.generation}" if s.generation else "ready"
    return 503, f"not ready: {s.reason}"


def cmd_agent(args: Args) -> int:
    import math

    from ..agent import Agent
    from ..errors import UsageError
    from ..up import config_path

    if not (math.isfinite(args.interval) and 0.1 <= args.interval <= 3600):
        raise UsageError(f"--interval must be 0.1 to 3600 seconds, not {args.interval:g}")
    if not (math.isfinite(args.retry) and args.retry >= args.interval):
        raise UsageError(f"--retry must be at least --interval ({args.interval:g} s), not {args.retry:g}")
    select = tuple(x.strip() for x in (args.interfaces or "").split(",") if x.strip())
    if args.interfaces is not None and not select:
        raise UsageError("--interfaces needs a name, a pattern or default-route")
    if select and not args.watch:
        raise UsageError("--interfaces needs --watch (the agent then runs the file's rules on those interfaces)")
    listen = None if args.listen == "off" else args.listen
    try:
        from .exporter import logger, parse_listen, parse_rule_metrics, serve
    except ImportError as exc:
        return needs("prometheus_client", "exporter", exc)
    if listen is not None:
        parse_listen(listen)  # a bad address or --rule-metrics is refused before anything runs
    parse_rule_metrics(args.rule_metrics)
    log = logger("agent")
    config = config_path(args.config)
    agent = Agent(pin_dir(args), config, watch=args.watch, interval=args.interval, retry=args.retry, select=select,
                  log=log)
    node = args.node or os.environ.get("NODE_NAME") or socket.gethostname()
    on = f", on the interfaces {args.interfaces} selects" if select else ""
    log(f"following {config} ({'bringing in each change' if args.watch else 'not applying it: --watch does'}{on}) "
        f"on node {node}")
    agent.step()  # the first pass before serving: readiness answers from the start
    code = serve(agent.pin_dir, listen, args.rule_metrics, name="agent", extra=(AgentCollector(agent, node),),
                 routes={"/healthz": lambda: health(agent), "/readyz": lambda: readiness(agent)},
                 work=(agent.run, agent.stop))
    if args.detach_on_exit:
        gone = agent.detach_all()
        log("detached from " + (", ".join(gone) if gone else "no interface") + " (--detach-on-exit)")
    else:
        log("stopped; the filter stays attached and enforcing")
    sys.stderr.flush()
    return code
