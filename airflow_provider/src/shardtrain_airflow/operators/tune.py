"""TuneOperator: a hyperparameter search on Ray from one DAG node.

Why an operator rather than dynamic task mapping (one task per trial): each mapped task costs
a scheduler slot, an interpreter and a cluster connection, and a search algorithm that learns
from earlier trials cannot run across tasks. Here the trials are Ray Tune trials inside one
task instance. The XCom is the best model's ``ModelArtifact`` dict plus ``trials`` (the trial
table's rows), ``best_result``, ``metric`` and ``mode``; ``RegisterModelOperator`` takes it as
is. The request id derives from the task instance, so a retry publishes to the same place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from shardtrain.errors import ConfigError
from shardtrain.integrations import DataSpec, connector_from_spec, resolve_callable
from shardtrain.modeling.tune import Tuner, TunerConfig
from shardtrain.modeling.tune.search import search_algorithm
from shardtrain.secrets import redact
from shardtrain_airflow.hooks.ray import RayHook
from shardtrain_airflow.hooks.snowpark import optional_session
from shardtrain_airflow.library_logs import library_logs
from shardtrain_airflow.operators.train import request_id_for


class TuneOperator(BaseOperator):
    """Run ``Tuner(train_func, search_space, TunerConfig(...))`` on Ray; XCom: the best model's
    artifact dict plus the trial table.

    Args:
        train_func: the vendor's ``train_func()`` (reads ``get_tuner_context()``), or its
            dotted path.
        search_space: name -> ``uniform``/``loguniform``/``randint``/``choice``, a list or
            a value (not templated: it holds sampling objects).
        metric, mode, num_trials, max_concurrent_trials, resource_per_trial: ``TunerConfig``.
        search_alg: 'random' (default), 'grid', 'bayesopt' or a search object.
        dataset_map: name -> a Parquet path/URL, ``{"table": ...}`` or ``{"query": ...}``
            (with ``snowflake_conn_id``), or a DataConnector.
        artifact_stage_location: where the best model goes (default: the embedded stage).
    """

    template_fields: Sequence[str] = ("dataset_map", "artifact_stage_location", "metric")
    template_fields_renderers = {"dataset_map": "json"}
    ui_color = "#eef8e8"

    def __init__(
        self,
        *,
        train_func: Any,
        search_space: dict[str, Any],
        metric: str,
        mode: str,
        search_alg: Any = None,
        num_trials: int = 5,
        max_concurrent_trials: int | None = None,
        resource_per_trial: dict[str, Any] | None = None,
        dataset_map: dict[str, Any] | None = None,
        artifact_stage_location: str | None = None,
        ray_conn_id: str | None = None,
        snowflake_conn_id: str | None = None,
        storage_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.train_func = train_func
        self.search_space = search_space
        self.metric, self.mode = metric, mode
        self.search_alg = search_alg
        self.num_trials = num_trials
        self.max_concurrent_trials = max_concurrent_trials
        self.resource_per_trial = resource_per_trial
        self.dataset_map = dataset_map or {}
        self.artifact_stage_location = artifact_stage_location
        self.ray_conn_id = ray_conn_id
        self.snowflake_conn_id = snowflake_conn_id
        self.storage_options = storage_options

    def _needs_session(self) -> bool:
        for name, data in self.dataset_map.items():
            if isinstance(data, str | dict):
                parsed = DataSpec.parse(data, name=name)
                if parsed is not None and parsed.kind in ("table", "query"):
                    return True
        return str(self.artifact_stage_location or "").startswith("@")

    def execute(self, context: Any) -> dict[str, Any]:
        # Checked before Ray or Snowflake are touched: a bad space fails the task at once.
        tuner = Tuner(
            resolve_callable(self.train_func),
            self.search_space,
            TunerConfig(
                metric=self.metric,
                mode=self.mode,
                search_alg=search_algorithm(self.search_alg),
                num_trials=self.num_trials,
                max_concurrent_trials=self.max_concurrent_trials,
                resource_per_trial=self.resource_per_trial,
            ),
        )
        if self._needs_session() and not self.snowflake_conn_id:
            raise ConfigError(
                f"task {self.task_id!r} reads a Snowflake table or query or publishes to a "
                "Snowflake stage, which needs a Snowpark session: set snowflake_conn_id."
            )
        conn_id = self.snowflake_conn_id if self._needs_session() else None
        with library_logs("ray"), optional_session(conn_id) as session:
            RayHook(self.ray_conn_id).connect()
            datasets = {  # specs are read here; connectors and tables pass as they are
                name: connector_from_spec(
                    data, session=session, storage_options=self.storage_options, name=name
                )
                if isinstance(data, str | dict)
                else data
                for name, data in self.dataset_map.items()
            }
            results = tuner.run(
                dataset_map=datasets or None,
                artifact_stage_location=self.artifact_stage_location or None,
                request_id=request_id_for(context["ti"]),
                session=session,
                storage_options=self.storage_options,
            )
        best = results.best_result.iloc[0]
        self.log.info(
            "%d trials; best %s=%s with %s",
            len(results.results),
            self.metric,
            best[self.metric],
            redact(
                {k[len("config/") :]: best[k] for k in best.index if str(k).startswith("config/")}
            ),
        )
        if results.artifact is not None:
            self.log.info("best model published to %s", results.artifact.uri)
        return results.to_dict()
