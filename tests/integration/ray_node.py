"""Start a Ray worker node joined to a head on this machine's loopback, and block.

`ray start --address 127.0.0.1:PORT` cannot do it here: it rewrites a loopback address to the
machine's outward IP (where a head on 127.0.0.1 does not listen) unless
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with that setting it refuses to start a worker node
at all. So this does what `ray start` and Ray's own multi-node test utility
(`ray.cluster_utils.Cluster.add_node`) do: a `ray._private.node.Node` with head=False.

Usage: python ray_node.py '<RayParams keyword arguments as JSON>'
"""

import json
import sys
import threading

from ray._private.node import Node
from ray._private.parameter import RayParams

if __name__ == "__main__":
    Node(RayParams(**json.loads(sys.argv[1])), head=False, shutdown_at_exit=True, spawn_reaper=True)
    threading.Event().wait()  # until the fixture ends this process group
