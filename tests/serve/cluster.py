"""A Ray cluster of several nodes on this machine (ray.cluster_utils.Cluster), run as its own
process so that a test can remove a node while jobs run (tests/serve/test_cluster.py).

    python -m tests.serve.cluster

Starts a head node (the Transcriber's: resource ``transcriber``) with the dashboard, and two
gateway nodes (resource ``gateway``), every one on loopback, with Ray's files in a temp folder
of its own (so the address file Ray writes for ``ray.init()`` is this cluster's, not the
machine's: a `serve run` elsewhere on the machine does not join it).
Prints one JSON line when the nodes are up (``dashboard``: the address ``serve deploy``
takes), then reads commands, one a line: ``remove N`` (gateway node N, 0 or 1: all its
processes killed, as when a machine is lost) and ``stop``. The environment is the nodes':
the app is built on the head node, from its environment (DATABASE_URL, WHISPER_API_KEY...).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from ray.cluster_utils import Cluster

from tests.serve.launcher import free_port


def main() -> None:
    # Ray's sockets live under its temp folder, and a socket's path may not pass 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
    dashboard = free_port()
    common = {"temp_dir": str(temp), "node_ip_address": "127.0.0.1"}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **common,
            "num_cpus": 1,
            "resources": {"transcriber": 2},
            "gcs_server_port": free_port(),
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard,
        },
    )
    gateways = [cluster.add_node(**common, num_cpus=1, resources={"gateway": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    print(
        json.dumps(
            {
                "dashboard": f"http://127.0.0.1:{dashboard}",
                "gcs": cluster.address,
                "nodes": [cluster.head_node.unique_id] + [n.unique_id for n in gateways],
            }
        ),
        flush=True,
    )
    try:
        for line in sys.stdin:
            command = line.split()
            if command[:1] == ["remove"]:
                node = gateways[int(command[1])]
                cluster.remove_node(node, allow_graceful=False)
                print(json.dumps({"removed": node.unique_id}), flush=True)
            elif command[:1] == ["stop"]:
                break
    finally:
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
