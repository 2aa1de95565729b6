"""ManyModelTrainOperator: one model per partition, trained on Ray from one DAG node.

Why an operator rather than dynamic task mapping: one task per partition costs a scheduler
slot, an interpreter and a cluster connection each, and clutters the DAG; here the partitions
are Ray tasks inside one task instance. The run id derives from the task instance (the same for
every try), so a retry trains only the partitions that failed. The XCom is the run manifest:
partition -> status, location, metrics (``RegisterModelOperator`` registers every partition's
model from it, tagged with the partition).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from shardtrain.integrations import resolve_callable
from shardtrain_airflow.hooks.ray import RayHook
from shardtrain_airflow.hooks.snowpark import optional_session
from shardtrain_airflow.library_logs import library_logs
from shardtrain_airflow.operators.train import request_id_for


class ManyModelTrainOperator(BaseOperator):
    """Train one model per value of ``partition_by`` with ``train_func``, each partition a Ray
    task; the XCom is the run manifest.

    Args:
        train_func: ``train_func(data_connector, context) -> model``, or its dotted path.
        partition_by: the partition column (or the ``column=value`` folder key).
        data: a Parquet path/URL, or ``{"table": ...}`` / ``{"query": ...}`` with
            ``snowflake_conn_id``.
        stage: where models go (default: the embedded local stage).
        run_id: default: from dag, run and task ids (stable across retries).
        serde: 'xgboost', 'lightgbm', 'torch', 'pickle' or a ``ModelSerde``; default: by
            the model's library, pickle-free.
        execution_options: ``ExecutionOptions`` fields (``num_cpus_per_partition``, ...).
        allow_partial_failure: succeed when some (not all) partitions failed; by default the
            task fails, naming them, and its retry trains only them.
    """

    template_fields: Sequence[str] = ("data", "stage", "run_id", "partition_by")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        train_func: Any,
        partition_by: str,
        data: Any,
        stage: str | None = None,
        run_id: str | None = None,
        serde: Any = None,
        execution_options: dict[str, Any] | None = None,
        allow_partial_failure: bool = False,
        ray_conn_id: str | None = None,
        snowflake_conn_id: str | None = None,
        storage_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.train_func, self.partition_by, self.data = train_func, partition_by, data
        self.stage, self.run_id, self.serde = stage, run_id, serde
        self.execution_options = execution_options
        self.allow_partial_failure = allow_partial_failure
        self.ray_conn_id, self.snowflake_conn_id = ray_conn_id, snowflake_conn_id
        self.storage_options = storage_options

    def execute(self, context: Any) -> dict[str, Any]:
        from shardtrain.modeling.distributors.many_model import train_many_models

        func = resolve_callable(self.train_func, "train_func")
        run_id = self.run_id or request_id_for(context["ti"])
        RayHook(self.ray_conn_id).connect()  # the connection's cluster, else the default
        with optional_session(self.snowflake_conn_id) as session, library_logs("ray"):
            manifest = train_many_models(
                func,
                stage=self.stage,
                partition_by=self.partition_by,
                data=self.data,
                run_id=run_id,
                serde=self.serde,
                execution_options=self.execution_options,
                session=session,
                storage_options=self.storage_options,
                allow_partial_failure=self.allow_partial_failure,
            )
        counts: dict[str, int] = {}
        for record in manifest["partitions"].values():
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        self.log.info("many-model run %s: %s (%s)", run_id, manifest["status"], counts)
        return manifest
