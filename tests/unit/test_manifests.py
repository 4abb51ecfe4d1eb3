"""contrib/kubernetes as a cluster would take it: every manifest validates against the Kubernetes API
schemas of the versions the README names (kubernetes-validate, strict: no unknown field), the parts
that no schema covers (the PodMonitor CRD, the kustomization) agree with the rest, and what the
DaemonSet runs is what pyxdp offers (the agent's options, its port and endpoints, a config that parses)."""

from __future__ import annotations

import copy
import glob
import os
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helpers.env import TREE

from pyxdp.cli.exporter import DEFAULT_PORT
from pyxdp.model.rulefile import parse_ruleset

KDIR = os.path.join(TREE, "contrib", "kubernetes")
VERSIONS = ("1.29", "1.33", "1.37")  # the README's "Fleet" section names these
NO_SCHEMA = {"PodMonitor", "Kustomization"}


def load(name: str) -> dict[str, Any]:
    with open(os.path.join(KDIR, name), encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    assert isinstance(doc, dict)
    return doc


def manifests() -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(KDIR, "*.yaml")))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", [n for n in manifests() if n not in ("kustomization.yaml", "podmonitor.yaml")])
def test_manifest_validates_against_the_api_schema(name: str, version: str) -> None:
    kubernetes_validate.validate(load(name), version, strict=True)


def test_the_validation_does_fail() -> None:
    ds = load("daemonset.yaml")
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["hostNetwork"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[0], strict=True)
    unknown = copy.deepcopy(ds)
    unknown["spec"]["template"]["spec"]["containers"][0]["capabilities"] = {"add": ["BPF"]}  # one level too high
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest_and_the_image() -> None:
    k = load("kustomization.yaml")
    assert sorted(k["resources"]) == [n for n in manifests() if n != "kustomization.yaml"]
    pod = load("daemonset.yaml")["spec"]["template"]["spec"]
    images = {c["image"].split(":")[0] for c in pod["containers"] + pod["initContainers"]}
    assert images == {i["name"] for i in k["images"]}
    assert {load(n)["metadata"].get("namespace", k["namespace"]) for n in k["resources"]
            if load(n)["kind"] != "Namespace"} == {k["namespace"]}


def test_daemonset_runs_the_agent_as_pyxdp_offers_it() -> None:
    from pyxdp.cli.parser import build_parser

    ds = load("daemonset.yaml")
    pod = ds["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    args = build_parser("agent").parse_args(agent["args"])
    assert args.command == "agent" and args.watch and args.interfaces == "default-route"
    port = int(args.listen.rpartition(":")[2])
    assert port == DEFAULT_PORT == agent["ports"][0]["containerPort"]
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(DEFAULT_PORT)
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert os.path.dirname(args.config) == mounts["config"]["mountPath"]
    assert mounts["bpffs"]["mountPath"] == "/sys/fs/bpf" and mounts["bpffs"]["mountPropagation"] == "HostToContainer"
    caps = agent["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"] and sorted(caps["add"]) == ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"]
    assert agent["securityContext"]["privileged"] is False
    (init,) = pod["initContainers"]  # only the bpffs mount is privileged, and only it propagates to the host
    assert init["securityContext"]["privileged"] is True
    assert init["volumeMounts"][0]["mountPropagation"] == "Bidirectional"
    assert pod["hostNetwork"] is True and pod["tolerations"] == [{"operator": "Exists"}]
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    cm = load("configmap.yaml")
    assert pod["volumes"][1]["configMap"]["name"] == cm["metadata"]["name"]
    name = os.path.basename(args.config)
    spec = parse_ruleset(cm["data"][name], name)
    assert spec.rules and not spec.interfaces  # the interfaces come from each node (--interfaces)


def test_podmonitor_selects_the_agents_and_their_port() -> None:
    pm = load("podmonitor.yaml")
    ds = load("daemonset.yaml")
    assert pm["kind"] == "PodMonitor" and pm["apiVersion"] == "monitoring.coreos.com/v1"
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for c in ds["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= ports
