"""The calls the Airflow operator and the Prefect task make: train to the end and return the
manifest, register every partition's model, write an inference run's predictions to a table.

Why a module of its own: the wrappers pass plain values (a data dict naming a path, table or
query; a serde by name; a connection's session) and get plain JSON back (XCom, task results);
this is where those are turned into the library's objects, once for both wrappers.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shardtrain.errors import ConfigError, PartitionError
from shardtrain.modeling.distributors.many_model.entities import (
    ExecutionOptions,
    PartitionStatus,
    RunStatus,
)
from shardtrain.modeling.distributors.many_model.run import ManyModelRun, is_run_manifest
from shardtrain.modeling.distributors.many_model.training import ManyModelTraining
from shardtrain.modeling.serde import (
    LightGBMSerde,
    ModelSerde,
    PickleSerde,
    TorchSerde,
    XGBoostSerde,
)
from shardtrain.stage import open_stage

logger = logging.getLogger("shardtrain")


def predictions_to_table(
    run: ManyModelRun, session: Any, table_name: str, batch_size: int = 65_536
) -> int:
    """Append every partition's predictions of an inference run to a Snowflake table, batch
    by batch; returns the rows written."""
    import pyarrow.parquet as pq

    run.wait()
    written = 0
    for details in run.partition_details.values():
        if details.status != PartitionStatus.DONE or not details.location:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "p.parquet"
            stage = open_stage(
                details.location.rsplit("/", 1)[0],
                session=run._session or session,
                storage_options=run._storage_options,
            )
            stage.download_file("predictions.parquet", local)
            for batch in pq.ParquetFile(local).iter_batches(batch_size=batch_size):
                frame = batch.to_pandas()
                session.create_dataframe(frame).write.mode("append").save_as_table(table_name)
                written += len(frame)
    return written


def register_partitions(
    run_or_manifest: ManyModelRun | dict[str, Any],
    *,
    name: str,
    registry: str | None = None,
    tags: dict[str, str] | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Register every trained partition's model as a version of ``name``, tagged
    ``shardtrain.partition=<id>`` (and ``shardtrain.run_id``); partition id -> the
    ``RegisteredModel`` as a dict. Failed partitions are skipped (they have no model)."""
    from shardtrain.model.registry import register_model

    manifest = (
        run_or_manifest.manifest if isinstance(run_or_manifest, ManyModelRun) else run_or_manifest
    )
    if not is_run_manifest(manifest):
        raise ConfigError(
            "expected a many-model run manifest (what ManyModelTraining's run, "
            "operator or task returned)."
        )
    out = {}
    for pid, rec in manifest["partitions"].items():
        if rec.get("status") != "DONE" or not rec.get("location"):
            continue
        registered = register_model(
            rec["location"],
            name=name,
            registry=registry,
            tags={
                **(tags or {}),
                "shardtrain.partition": pid,
                "shardtrain.run_id": manifest["run_id"],
            },
            **kwargs,
        )
        out[pid] = registered.to_dict()
    return out


def serde_named(serde: ModelSerde | str | None) -> ModelSerde | None:
    """A serde from what an orchestrator passes: an instance or a built-in name ('xgboost',
    'lightgbm', 'torch', 'pickle')."""
    if serde is None or isinstance(serde, ModelSerde):
        return serde
    builtin: dict[str, type[ModelSerde]] = {
        "xgboost": XGBoostSerde,
        "lightgbm": LightGBMSerde,
        "torch": TorchSerde,
        "pytorch": TorchSerde,
        "pickle": PickleSerde,
    }
    if serde in builtin:
        return builtin[serde]()
    raise ConfigError(
        f"serde {serde!r} is not one of {sorted(builtin)}: pass a ModelSerde instance for a "
        "custom format."
    )


def train_many_models(
    train_func: Callable,
    *,
    stage: str | None,
    partition_by: str,
    data: Any,
    run_id: str | None = None,
    serde: ModelSerde | str | None = None,
    execution_options: ExecutionOptions | dict | None = None,
    session: Any = None,
    storage_options: dict[str, Any] | None = None,
    ray_address: str | None = None,
    allow_partial_failure: bool = False,
) -> dict[str, Any]:
    """Run many-model training to the end and return its run manifest (what the Airflow
    operator pushes to XCom and the Prefect task returns).

    ``data``: a Parquet path/URL (partitioned by a column or by ``partition_by=value``
    folders), ``{"table": ...}`` / ``{"query": ...}`` with ``session``, a DataFrame or a
    DataConnector. With failed partitions it raises ``PartitionError`` (their errors in the
    message) unless ``allow_partial_failure``; a retry with the same ``run_id`` trains only them.
    """
    func = train_func  # the wrappers resolve dotted paths (shardtrain.integrations)
    if isinstance(data, dict):
        if "path" in data:
            data = data["path"]
        elif session is None:
            raise ConfigError("a Snowflake table or query needs a Snowpark session (a connection).")
        elif "table" in data:
            data = session.table(data["table"])
        elif "query" in data:
            data = session.sql(data["query"])
        else:
            raise ConfigError(f"data must name a path, table or query, got {sorted(data)}.")
    trainer = ManyModelTraining(
        func, stage, serde_named(serde), session=session, storage_options=storage_options
    )
    snowpark = type(data).__module__.startswith("snowflake.snowpark")
    run = trainer.run(
        partition_by=partition_by,
        snowpark_dataframe=data if snowpark else None,
        data=None if snowpark else data,
        run_id=run_id,
        execution_options=execution_options,
        ray_address=ray_address,
    )
    status = run.wait()
    failed = run.failures()
    for pid, details in failed.items():
        logger.error("partition %s failed: %s\n%s", pid, details.error, details.traceback)
    if failed and (status == RunStatus.FAILURE or not allow_partial_failure):
        raise PartitionError(
            f"{len(failed)} of {len(run.partition_details)} partitions of run {run.run_id!r} "
            f"failed: "
            + "; ".join(f"{p}: {d.error}" for p, d in list(failed.items())[:5])
            + ". Their tracebacks are in the log and the run manifest; a retry with the same "
            "run_id trains only the failed partitions.",
            run_id=run.run_id,
            partition_id=next(iter(failed)),
            worker_traceback=next(iter(failed.values())).traceback,
        )
    return run.manifest
