"""RayHook and the ``ray`` connection type: which Ray cluster a task trains on."""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk import BaseHook


class RayHook(BaseHook):
    """Connects the task's process to Ray.

    Connection fields: ``host`` is the address (``ray://head:10001``, ``head:6379`` or
    ``auto``; a port in ``port`` is appended), extra ``namespace`` and ``runtime_env`` (JSON).
    Without a connection id, the embedded local Ray (or ``RAY_ADDRESS``) is used.
    """

    conn_name_attr = "ray_conn_id"
    default_conn_name = "ray_default"
    conn_type = "ray"
    hook_name = "Ray"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "login", "password"],
            "relabeling": {"host": "Address (ray://host:10001, host:6379 or auto)"},
            "placeholders": {
                "host": "ray://ray-head:10001",
                "extra": json.dumps({"namespace": "training", "runtime_env": {"pip": ["xgboost"]}}),
            },
        }

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
        runtime_env = extra.get("runtime_env")
        if isinstance(runtime_env, str):
            runtime_env = json.loads(runtime_env)
        return {"address": address, "namespace": extra.get("namespace"), "runtime_env": runtime_env}

    def connect(self) -> None:
        from shardtrain.runtime.cluster import connect

        connect(**self.settings())
