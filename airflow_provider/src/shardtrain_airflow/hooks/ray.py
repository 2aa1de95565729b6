"""RayHook and the ``ray`` connection type: which Ray cluster a task trains on.

The connection form (fields, labels, placeholders) is declared in the provider info
(``conn-fields`` / ``ui-field-behaviour``), as Airflow 3.2+ reads it without importing the hook.
"""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk import BaseHook

from shardtrain.errors import ConfigError
from shardtrain.integrations import connect_ray


def _extra(extra: dict[str, Any], name: str) -> Any:
    """An extra field, stored plain (``namespace``) or with the form's prefix."""
    value = extra.get(name)
    return value if value not in (None, "") else extra.get(f"extra__ray__{name}") or None


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
        """Connect this process to the connection's cluster (no-op when already connected)."""
        connect_ray(**self.settings())
