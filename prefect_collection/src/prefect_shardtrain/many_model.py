"""Prefect tasks for many-model training: one model per partition from one task.

Why a task and not ``.map()``: mapping a training task over partitions costs a task run, a
Ray connection and a result per partition; here the partitions are Ray tasks inside one
Prefect task. The run id derives from the flow and task run (the same for every retry of the
task run), so a retry trains only the partitions that failed. The result is the run manifest:
partition -> status, location, metrics; ``register_many_models`` registers every partition's
model with its partition as a tag.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from prefect_shardtrain.blocks import ModelStage, RayCluster
from prefect_shardtrain.library_logs import library_logs
from prefect_shardtrain.tasks import forwarded_logs, request_id
from shardtrain.integrations import resolve_callable
from shardtrain.model.registry import registry_libraries
from shardtrain.modeling.distributors.many_model import register_partitions
from shardtrain.modeling.distributors.many_model import train_many_models as run_many_models


@task(name="train_many_models", retries=0)
def train_many_models(
    train_func: Any,
    partition_by: str,
    data: Any,
    run_id: str | None = None,
    serde: Any = None,
    execution_options: dict[str, Any] | None = None,
    allow_partial_failure: bool = False,
    ray_cluster: RayCluster | None = None,
    stage: ModelStage | None = None,
) -> dict[str, Any]:
    """Train one model per value of ``partition_by`` with ``train_func(data_connector,
    context)``; returns the run manifest (partition -> status, location, metrics).

    ``data``: a Parquet path/URL (by column or ``column=value`` folders), a DataFrame or a
    DataConnector, or ``{"table"|"query": ...}`` read with the stage's Snowflake credentials.
    With failed partitions the task fails naming them (unless ``allow_partial_failure``);
    its retry trains only them.
    """
    stage = stage or ModelStage()
    func = resolve_callable(train_func, "train_func")
    with contextlib.ExitStack() as opened:
        opened.enter_context(library_logs("ray"))
        (ray_cluster or RayCluster()).connect()
        needs_session = stage.needs_session or (
            isinstance(data, dict) and ("table" in data or "query" in data)
        )
        session = opened.enter_context(stage.open_session()) if needs_session else None
        with forwarded_logs():
            manifest = run_many_models(
                func,
                stage=stage.uri,
                partition_by=partition_by,
                data=data,
                run_id=run_id or request_id(),
                serde=serde,
                execution_options=execution_options,
                session=session,
                storage_options=stage.options(),
                allow_partial_failure=allow_partial_failure,
            )
    rows = [
        {
            "partition": pid,
            "status": r["status"],
            "location": r.get("location") or "",
            "error": r.get("error") or "",
        }
        for pid, r in sorted(manifest["partitions"].items())
    ]
    create_table_artifact(rows, key=None, description=f"many-model run {manifest['run_id']}")
    get_run_logger().info(
        "many-model run %s: %s, %d partitions", manifest["run_id"], manifest["status"], len(rows)
    )
    return manifest


@task(name="register_many_models", retries=0)
def register_many_models(
    manifest: dict[str, Any],
    name: str,
    registry: str | None = None,
    tags: dict[str, str] | None = None,
    stage: ModelStage | None = None,
) -> dict[str, dict[str, Any]]:
    """Register every trained partition's model (from ``train_many_models``' manifest)
    as a version of ``name`` tagged ``shardtrain.partition``; partition -> RegisteredModel dict."""
    stage = stage or ModelStage()
    libraries = registry_libraries(registry)
    with stage.open_session() as session, library_logs(*libraries):
        registered = register_partitions(
            manifest,
            name=name,
            registry=registry,
            tags=tags,
            session=session,
            storage_options=stage.options(),
        )
    get_run_logger().info("registered %d partition models as %s", len(registered), name)
    return registered


__all__ = ["register_many_models", "train_many_models"]
