"""RayHook and the ``ray`` connection type: which Ray cluster a task trains on.

The connection form (fields, labels, placeholders) is declared in the provider info
(``conn-fields`` / ``ui-field-behaviour``), as Airflow 3.2+ reads it without importing the hook.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow.sdk import BaseHook

from shardtrain.errors import ConfigError
from shardtrain.integrations import connect_ray
from shardtrain.jobs import JobTarget

#: The signals whose handlers connecting to Ray must leave as they were: Airflow's task runner
#: calls the operator's ``on_kill`` from its SIGTERM handler (mark failed, clear), and
#: ``ray.init`` installs its own (``sys.exit``) and, in Ray's core worker, a C-level handler
#: that dumps a stack trace to stderr (which Airflow logs at ERROR).
KEPT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def kept_signal_handlers(signals: tuple[signal.Signals, ...] = KEPT_SIGNALS) -> Iterator[None]:
    """Restore the handlers of ``signals`` after the block (only the main thread has any).

    Each handler is installed again even when Python still reports it: that also puts back
    Python's C-level handler over any native one installed meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:  # None: installed outside Python, cannot be put back
                signal.signal(sig, handler)


def _extra(extra: dict[str, Any], name: str) -> Any:
    """An extra field, stored plain (``namespace``) or with the form's prefix."""
    value = extra.get(name)
    return value if value not in (None, "") else extra.get(f"extra__ray__{name}") or None


class RayHook(BaseHook):
    """Connects the task's process to Ray.

    Connection fields: ``host`` is the address (``ray://head:10001``, ``head:6379`` or
    ``auto``; a port in ``port`` is appended), extra ``namespace`` and ``runtime_env`` (JSON).
    Without a connection id, the embedded local Ray (or ``RAY_ADDRESS``) is used.

    Ray Jobs: extra ``job_server`` is the cluster's job server (``http://head:8265``); with
    it, training runs as a Ray Job by default. ``password`` holds the job server's auth token
    when it has one (sent as a bearer header, never logged), extra ``python`` the interpreter
    on the cluster, extra ``snowflake_connection`` the name of a Snowflake connection the
    cluster knows (its connections.toml): the job reads Snowflake data with it, so no
    credential travels with the job. Without a connection, jobs go to the local cluster.
    """

    conn_name_attr = "ray_conn_id"
    default_conn_name = "ray_default"
    conn_type = "ray"
    hook_name = "Ray"

    def __init__(self, ray_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ray_conn_id = ray_conn_id

    def settings(self) -> dict[str, Any]:
        """address / namespace / runtime_env from the connection (all None without one)."""
        if not self.ray_conn_id:
            return {"address": None, "namespace": None, "runtime_env": None}
        conn = self.get_connection(self.ray_conn_id)
        address = conn.host or None
        if address and conn.port:
            address = f"{address}:{conn.port}"
        extra = conn.extra_dejson or {}
        runtime_env = _extra(extra, "runtime_env")
        if isinstance(runtime_env, str):
            try:
                runtime_env = json.loads(runtime_env)
            except ValueError as exc:
                raise ConfigError(
                    f"the runtime_env of Ray connection {self.ray_conn_id!r} is not JSON ({exc}); "
                    'write it as a JSON object, e.g. {"pip": ["xgboost"]}.'
                ) from exc
        return {
            "address": address,
            "namespace": _extra(extra, "namespace"),
            "runtime_env": runtime_env,
        }

    def connect(self) -> None:
        """Connect this process to the connection's cluster (no-op when already connected),
        keeping the process's SIGTERM and SIGINT handlers (``kept_signal_handlers``)."""
        settings = self.settings()
        with kept_signal_handlers():
            connect_ray(**settings)

    def _job_fields(self) -> dict[str, Any]:
        if not self.ray_conn_id:
            return {}
        conn = self.get_connection(self.ray_conn_id)
        extra = conn.extra_dejson or {}
        return {
            "job_server": _extra(extra, "job_server"),
            "python": _extra(extra, "python"),
            "snowflake_connection": _extra(extra, "snowflake_connection"),
            "use_jobs": _extra(extra, "use_jobs"),
            "token": conn.password or None,
            "has_address": bool(conn.host),
        }

    def uses_jobs(self) -> bool:
        """Whether the connection asks for Ray Jobs (a job server, unless ``use_jobs`` is off)."""
        fields = self._job_fields()
        use = fields.get("use_jobs")
        if isinstance(use, str):
            use = use.strip().lower() in ("1", "true", "yes", "on")
        return bool(fields.get("job_server")) if use is None else bool(use)

    def snowflake_connection(self) -> str | None:
        """The cluster-side Snowflake connection name a job reads Snowflake data with."""
        return self._job_fields().get("snowflake_connection")

    def job_target(self) -> JobTarget:
        """Where this connection's jobs go: its ``job_server``, else the local cluster."""
        fields = self._job_fields()
        runtime_env = self.settings()["runtime_env"] or {}
        if fields.get("job_server"):
            token = fields.get("token")
            return JobTarget(
                address=fields["job_server"],
                runtime_env=runtime_env,
                python=fields.get("python") or "python",
                headers={"Authorization": f"Bearer {token}"} if token else {},
            )
        if fields.get("has_address"):
            raise ConfigError(
                f"Ray connection {self.ray_conn_id!r} names a cluster address but no job "
                "server: add the extra field job_server (the head's dashboard address, e.g. "
                "http://head:8265) to run training as Ray Jobs."
            )
        return JobTarget.local(runtime_env=runtime_env)
