"""Starting Ray or joining a cluster, for every job that needs Ray (training, sweeps, evaluation actors).

It sits below ``train`` and ``eval`` so that neither reaches into the other for it.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Optional

import ray


def ensure_ray(address: Optional[str] = None) -> bool:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``, as set by ``ray job submit``), else start a local
    one; True when this call started it (so no other node will ever join: see :func:`check_resources`)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    options = {"log_to_driver": True, "configure_logging": True, "logging_level": "WARNING"}
    if address:
        ray.init(address=address, **options)
        return False
    start_local_ray(**options)
    return True


def start_local_ray(**init_options: Any) -> str:
    """Start a Ray instance of this process's own on 127.0.0.1 that all its processes know by address.

    Ray processes that look a cluster up without an address find every Ray instance on the machine. Ray
    Train V2's placement-group cleaner does (it asks the state API whether its controller lives): with two
    jobs' Rays on one machine it can ask the other one, find no such controller, and remove the live run's
    placement group. So the GCS port is chosen here and ``RAY_ADDRESS`` names it in the environment the
    instance's processes inherit from ``ray.init``, and in this process's while Ray runs (Ray Data's hang
    detector asks the state API from the driver). ``init_options`` go to ``ray.init``. Returns the GCS
    address.
    """
    # Ray Train V2 watches the nodes of each worker group for drains (preemption) with an actor whose creation
    # Ray Core reports as an error line, its arguments being in the object store (ray-project/ray#53727). A Ray
    # started here is one node that nothing drains: the watcher has nothing to see. Set before ray.init, so
    # every process of the instance inherits it; a value the user set is kept.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    for attempt in range(3):
        port = _free_port()
        address = f"127.0.0.1:{port}"
        previous = {name: os.environ.get(name) for name in ("RAY_GCS_SERVER_PORT", "RAY_ADDRESS")}
        os.environ["RAY_GCS_SERVER_PORT"], os.environ["RAY_ADDRESS"] = str(port), address
        try:
            # "local" starts an instance even though RAY_ADDRESS is set (None or "auto" would join it).
            ray.init(address="local", _node_ip_address="127.0.0.1", **init_options)
            previous.pop("RAY_ADDRESS")  # kept: it names the instance this process now runs
            return address
        except Exception:
            if attempt == 2:
                raise
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    raise AssertionError("unreachable")


def _free_port() -> int:
    # Another process may take it before the GCS binds it; start_local_ray then tries another.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
