"""The vendor's Cluster Manager on Ray: ``scale_cluster(expected_cluster_size)`` and
``get_nodes()``, for the cluster this process is connected to (``runtime.cluster.connect``:
``RAY_ADDRESS``, or the local head).

The vendor resizes the Ray cluster behind a notebook. A Ray cluster grows only through its
autoscaler, so ``scale_cluster`` asks the autoscaler for the nodes
(``ray.autoscaler.sdk.request_resources``: one bundle the size of a node per node wanted)
where the cluster has one that can add nodes, that is where Ray's cluster config has a node
type whose count may grow (what Ray Data reads too). A fixed cluster (a local head, a static
``ray start`` cluster) cannot change size: ``scale_cluster`` says so, with its size, instead
of waiting for nodes that never come.
"""

from __future__ import annotations

import time
from typing import Any

from shardtrain.errors import ClusterError, ConfigError
from shardtrain.runtime.cluster import connect

__all__ = ["get_nodes", "scale_cluster"]

#: How long ``scale_cluster`` waits for the nodes by default (``options["timeout_s"]``).
DEFAULT_TIMEOUT_S = 600.0
#: How often it looks at the cluster while it waits.
POLL_S = 2.0
#: What ``options`` may hold.
OPTIONS = ("node_resources", "timeout_s")
#: The resources a node bundle asks for (memory and Ray's own markers vary node to node).
_BUNDLE_KEYS = ("CPU", "GPU")


def get_nodes() -> list[dict[str, Any]]:
    """The cluster's alive nodes, the head first: ``node_id``, ``address``, ``hostname``,
    ``is_head``, ``cpus``, ``gpus``, ``memory_bytes``."""
    import ray

    connect()
    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        nodes.append(
            {
                "node_id": node["NodeID"],
                "address": node.get("NodeManagerAddress"),
                "hostname": node.get("NodeManagerHostname"),
                "is_head": "node:__internal_head__" in resources,
                "cpus": float(resources.get("CPU", 0)),
                "gpus": float(resources.get("GPU", 0)),
                "memory_bytes": int(resources.get("memory", 0)),
            }
        )
    return sorted(nodes, key=lambda n: not n["is_head"])


def scale_cluster(
    expected_cluster_size: int,
    *,
    notebook_name: str | None = None,
    is_async: bool = False,
    options: dict[str, Any] | None = None,
) -> bool:
    """Scale the cluster to ``expected_cluster_size`` nodes, the head included.

    Args:
        expected_cluster_size: nodes wanted, head included (3: the head and 2 workers).
        notebook_name: accepted for the vendor's signature; the cluster scaled is the one this
            process is connected to.
        is_async: return once the autoscaler has the request, without waiting for the nodes.
        options: ``timeout_s`` (how long to wait, default 600) and ``node_resources`` (the
            resources of one new node, e.g. ``{"CPU": 8}``; default: the first node type of
            the autoscaler's config that can grow).

    Returns:
        True once the cluster has that many nodes (at once for ``is_async``).

    Raises:
        ConfigError: an argument is wrong (checked before Ray is reached).
        ClusterError: the cluster is fixed (no autoscaler can add or remove nodes) and is not
            of that size; or the nodes did not come within ``timeout_s`` (the request is then
            withdrawn, so the cluster goes back to its previous size, as the vendor's rolls
            back).
    """
    size, timeout_s, node_resources = check_arguments(expected_cluster_size, is_async, options)
    nodes = get_nodes()
    groups = autoscaling_node_types()
    if not groups:
        if len(nodes) == size:
            return True
        raise ClusterError(
            f"this Ray cluster is fixed at {len(nodes)} node(s): no autoscaler can add or "
            f"remove nodes, so it cannot be scaled to {size}. Start it with an autoscaling "
            "config (ray up, KubeRay) to scale it, or size the training to its "
            f"{len(nodes)} node(s).",
            size=len(nodes),
            expected_cluster_size=size,
        )
    shape = node_resources or groups[0]
    before = [_bundle(n) for n in nodes]
    _request(node_bundles(before, shape, size))
    if is_async:
        return True
    deadline = time.monotonic() + timeout_s
    while True:
        count = len(get_nodes())
        if count == size:
            return True
        if time.monotonic() >= deadline:
            _request(before)  # withdrawn: the autoscaler returns to the previous size
            raise ClusterError(
                f"the cluster reached {count} of {size} node(s) within {timeout_s:g} s; the "
                "request was withdrawn. Check the autoscaler's node limits and its log "
                "(ray status), or give options={'timeout_s': ...} more time.",
                size=count,
                expected_cluster_size=size,
            )
        time.sleep(POLL_S)


def check_arguments(
    expected_cluster_size: Any, is_async: Any, options: Any
) -> tuple[int, float, dict[str, float] | None]:
    """The checked ``(size, timeout_s, node_resources)``; a ``ConfigError`` that says what is
    wrong otherwise."""
    if isinstance(expected_cluster_size, bool) or not isinstance(expected_cluster_size, int):
        raise ConfigError(
            "expected_cluster_size must be a whole number of nodes (the head included), got "
            f"{expected_cluster_size!r}.",
            field="expected_cluster_size",
        )
    if expected_cluster_size < 1:
        raise ConfigError(
            f"expected_cluster_size must be at least 1 (the head node), got "
            f"{expected_cluster_size}.",
            field="expected_cluster_size",
        )
    if not isinstance(is_async, bool):
        raise ConfigError(f"is_async must be True or False, got {is_async!r}.", field="is_async")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise ConfigError(f"options must be a dict, got {type(options).__name__}.", field="options")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown options {unknown}: scale_cluster takes {list(OPTIONS)}.", field="options"
        )
    timeout_s = options.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
        raise ConfigError(
            f"options['timeout_s'] must be a positive number of seconds, got {timeout_s!r}.",
            field="options",
        )
    node_resources = options.get("node_resources")
    if node_resources is not None and (
        not isinstance(node_resources, dict)
        or not node_resources
        or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v > 0
            for k, v in node_resources.items()
        )
    ):
        raise ConfigError(
            "options['node_resources'] must map resource names to positive amounts, e.g. "
            f"{{'CPU': 8}}; got {node_resources!r}.",
            field="options",
        )
    return expected_cluster_size, float(timeout_s), node_resources


def node_bundles(
    current: list[dict[str, float]], new_node: dict[str, float], size: int
) -> list[dict[str, float]]:
    """What to ask the autoscaler for ``size`` nodes: the first ``size`` of the current nodes
    (the head first), then one ``new_node`` a missing node. Fewer bundles than nodes lets the
    autoscaler remove the idle rest."""
    return [dict(b) for b in current[:size]] + [dict(new_node)] * max(0, size - len(current))


def autoscaling_node_types() -> list[dict[str, float]]:
    """The resources of each node type the autoscaler can add (its count may grow), from
    Ray's cluster config; empty where no autoscaler reports one (a fixed cluster)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # an older or newer Ray without it: treated as fixed, which is safe
        return []
    if not config:
        return []
    return [
        {k: float(v) for k, v in group.resources.items() if k in _BUNDLE_KEYS}
        for group in config.node_group_configs
        if group.resources
        and group.max_count != 0
        and (group.max_count == -1 or group.max_count > group.min_count)
    ]


def _bundle(node: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in (("CPU", node["cpus"]), ("GPU", node["gpus"])) if v}


def _request(bundles: list[dict[str, float]]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)
