"""Connect to Ray: a running ``ray.init``, else an explicit address, else ``RAY_ADDRESS``, else
the embedded default chosen by ``SHARDTRAIN_CLUSTER``: ``local`` (default) joins the machine's
long-lived local head, starting it when none runs (see ``local_cluster``); ``private`` starts a
Ray inside this process that stops with it.

An unreachable address fails within seconds with a ``ClusterError``; ``ray.init`` alone can
wait a long time on a dead GCS address.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import Any

from shardtrain import env
from shardtrain.errors import ClusterError
from shardtrain.runtime import local_cluster

#: Seconds to wait for a TCP connection to a remote Ray address before giving up.
PROBE_TIMEOUT_S = 5.0


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``ray://host:port`` or ``host:port``; None for ``auto``/``local``."""
    target = address.split("://", 1)[1] if "://" in address else address
    if target in ("auto", "local", ""):
        return None
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(
            f"Ray address {address!r} is not of the form 'ray://host:10001', 'host:6379' or "
            "'auto'.",
            address=address,
        )
    return host.strip("[]"), int(port)


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ClusterError unless something accepts TCP connections at the address."""
    endpoint = _host_port(address)
    if endpoint is None:
        return
    try:
        with socket.create_connection(endpoint, timeout=timeout_s):
            pass
    except OSError as exc:
        raise ClusterError(
            f"cannot reach Ray at {address!r} ({exc}). Check that the cluster is up and the "
            "address and port are right (Ray Client listens on 10001, the GCS on 6379), or "
            "leave the address unset to use the local Ray head.",
            address=address,
        ) from exc


#: Held while this process connects: ``ray.init`` from two threads at once starts two Rays.
_CONNECTING = threading.Lock()


def connect(
    address: str | None = None,
    *,
    namespace: str | None = None,
    runtime_env: dict[str, Any] | None = None,
    include_dashboard: bool = False,
) -> None:
    """Make sure this process is connected to a Ray cluster.

    Args:
        address: ``ray://host:port``, ``host:port`` or ``auto``; default ``RAY_ADDRESS``.
        namespace: Ray namespace for the actors this process creates.
        runtime_env: Ray runtime environment (pip packages, env vars, working dir).
        include_dashboard: start the dashboard with a private Ray (the shared local head
            always runs one).
    """
    import ray

    if ray.is_initialized():
        return
    if not getattr(sys.stdout, "isatty", lambda: False)():
        # Worker lines reach a task log, not a terminal: no ANSI colour codes around them.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    with _CONNECTING:  # threads of one process (Prefect's fan-out) connect once, not N times
        if ray.is_initialized():
            return
        _prepare_serialization()
        _connect(
            address,
            namespace=namespace,
            runtime_env=runtime_env,
            include_dashboard=include_dashboard,
        )


#: What Ray's serializer set-up imports in a process's first remote call (its pydantic and
#: starlette serializers, ``ray.util.serialization_addons``): ~0.1-0.3 s of imports that a new
#: driver's first fit paid. Imported on a thread while ``ray.init`` waits on the cluster.
SERIALIZER_IMPORTS = (
    "ray._common.pydantic_compat",
    "pydantic.fields",
    "pydantic.v1.fields",
    "starlette.datastructures",
    "ray._private.arrow_serialization",
)


def _prepare_serialization() -> None:
    """Import what Ray's serializers need on a background thread (once per process)."""
    global _prepared
    if _prepared:
        return
    _prepared = True
    threading.Thread(
        target=_import_serializers, name="shardtrain-ray-serializers", daemon=True
    ).start()


_prepared = False


def _import_serializers() -> None:
    import importlib

    for name in SERIALIZER_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception:  # absent (Ray's minimal install) or moved: Ray imports it itself
            pass


def _connect(
    address: str | None,
    *,
    namespace: str | None,
    runtime_env: dict[str, Any] | None,
    include_dashboard: bool,
) -> None:
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {"namespace": namespace, "runtime_env": runtime_env}
    options = {k: v for k, v in options.items() if v is not None}
    if address:
        probe(address)
        try:
            ray.init(address=address, **options)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            raise ClusterError(
                f"could not join the Ray cluster at {address!r}: {exc}", address=address
            ) from exc
        return
    if env.CLUSTER.get() == "private":
        ray.init(
            address="local",  # never a head started elsewhere on the machine
            include_dashboard=include_dashboard,
            configure_logging=False,
            **options,
        )
        return
    head = local_cluster.ensure()
    try:
        local_cluster.join(head, **options)
    except ClusterError:
        if head.is_alive():
            raise
        # It stopped between the check and the join (idle stop, `shardtrain cluster stop`).
        local_cluster.join(local_cluster.ensure(), **options)
