"""docker-compose.yml's cluster profile against configs/cluster.yaml (no Docker engine here:
the file is checked, not run; tests/serve/test_cluster.py runs the same `ray start` and
`serve deploy` steps outside containers)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
CLUSTER = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())
CLUSTER_SERVICES = {"ray-head", "ray-worker", "ray-deploy", "cluster-proxy"}


def offered(service: str) -> dict[str, float]:
    """The custom resources a node service's `ray start --resources` offers."""
    command = COMPOSE["services"][service]["command"]
    text = command if isinstance(command, str) else " ".join(command)
    found = re.search(r"--resources='([^']+)'", text)
    assert found, text
    return dict(json.loads(found.group(1)))


def test_the_cluster_profile_is_apart_from_the_single_box_default() -> None:
    services = COMPOSE["services"]
    for name in CLUSTER_SERVICES:
        assert services[name].get("profiles") == ["cluster"], name
    for name in ("whisper-server", "proxy"):
        assert "profiles" not in services[name]
    # ${VAR:?} is read in every profile: the default must not need the cluster's variables.
    raw = (ROOT / "docker-compose.yml").read_text()
    assert re.findall(r"\$\{(\w+):\?", raw) == ["WHISPER_API_KEY", "WHISPER_API_KEY"]


def test_the_nodes_offer_what_configs_cluster_yaml_asks_for() -> None:
    app = CLUSTER["applications"][0]
    deployments = {d["name"]: d for d in app["deployments"]}
    head, worker = offered("ray-head"), offered("ray-worker")
    for resource, each in app["args"]["gateway_resources"].items():
        assert head.get(resource, 0) + worker.get(resource, 0) >= (
            deployments["Gateway"]["num_replicas"] * each
        )
    for resource, each in app["args"]["transcriber_resources"].items():
        assert head.get(resource, 0) + worker.get(resource, 0) >= each
    assert CLUSTER["proxy_location"] == "EveryNode"
    deploy = " ".join(COMPOSE["services"]["ray-deploy"]["command"])
    assert "configs/cluster.yaml" in deploy and "serve deploy" in deploy
    for name in ("ray-head", "ray-worker", "ray-deploy"):
        env = COMPOSE["services"][name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in env
    assert COMPOSE["services"]["ray-head"]["depends_on"]["postgres"] == {
        "condition": "service_healthy"
    }
    assert "healthcheck" in COMPOSE["services"]["ray-head"]
    assert "healthcheck" in COMPOSE["services"]["ray-worker"]
