"""Training operators: each trains on Ray with shardtrain and returns the model's artifact.

Operators own orchestration (connections, request ids, templating, links, kill); core
owns the work. The return value, ``ModelArtifact.to_dict()``, is the XCom.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from typing import Any

from airflow.sdk import BaseHook, BaseOperator, BaseOperatorLink

from shardtrain.artifact import request_id_from
from shardtrain.data.spec import connector_from_spec
from shardtrain.errors import ConfigError
from shardtrain_airflow.hooks.ray import RayHook


def request_id_for(ti: Any) -> str:
    """dag_id, run_id and task_id (and map index) as a folder name: the same for every try of
    one task instance, different for any other run or task."""
    identity = f"{ti.dag_id}__{ti.run_id}__{ti.task_id}"
    if getattr(ti, "map_index", -1) not in (None, -1):
        identity += f"__{ti.map_index}"
    return request_id_from(identity)


def snowpark_session(snowflake_conn_id: str) -> Any:
    """A Snowpark session from an Airflow Snowflake connection.

    Credentials stay inside the session: nothing derived from the connection is logged,
    pushed to XCom or written into the artifact. A connection whose extra has
    ``"local_testing": true`` gives Snowpark's local emulation (for DAG development and tests
    without an account).
    """
    conn = BaseHook.get_connection(snowflake_conn_id)
    if (conn.extra_dejson or {}).get("local_testing"):
        from snowflake.snowpark import Session

        return Session.builder.config("local_testing", True).create()
    from airflow.providers.snowflake.hooks.snowflake import SnowflakeHook

    return SnowflakeHook(snowflake_conn_id=snowflake_conn_id).get_snowpark_session()


class ModelLocationLink(BaseOperatorLink):
    """The extra link of a training task: where its model was published."""

    name = "Model location"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(ti_key=ti_key, key="return_value")
        return (value or {}).get("uri", "") if isinstance(value, dict) else ""


class _TrainOperator(BaseOperator):
    """What the training operators share: Ray and Snowflake connections, data, stage."""

    template_fields: Sequence[str] = (
        "table",
        "query",
        "path",
        "eval_table",
        "eval_query",
        "eval_path",
        "input_cols",
        "label_col",
        "training_params",
        "artifact_stage_location",
    )
    template_fields_renderers = {"training_params": "json", "query": "sql", "eval_query": "sql"}
    operator_extra_links = (ModelLocationLink(),)
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        input_cols: list[str] | str,
        label_col: str,
        table: str | None = None,
        query: str | None = None,
        path: str | None = None,
        eval_table: str | None = None,
        eval_query: str | None = None,
        eval_path: str | None = None,
        training_params: dict[str, Any] | None = None,
        n_estimators: int = 100,
        scaling_config: dict[str, Any] | None = None,
        failure_config: dict[str, Any] | None = None,
        verbose_eval: int | None = 10,
        artifact_stage_location: str | None = None,
        ray_conn_id: str | None = None,
        snowflake_conn_id: str | None = None,
        storage_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.input_cols, self.label_col = input_cols, label_col
        self.table, self.query, self.path = table, query, path
        self.eval_table, self.eval_query, self.eval_path = eval_table, eval_query, eval_path
        # Not `params`: that name is Airflow's own (DAG params, `{{ params.x }}`).
        self.training_params = training_params or {}
        self.n_estimators = n_estimators
        self.scaling_config = scaling_config or {}
        self.failure_config = failure_config or {}
        self.verbose_eval = verbose_eval
        self.artifact_stage_location = artifact_stage_location
        self.ray_conn_id = ray_conn_id
        self.snowflake_conn_id = snowflake_conn_id
        self.storage_options = storage_options

    def _estimator(self):
        raise NotImplementedError

    def execute(self, context: Any) -> dict[str, Any]:
        RayHook(self.ray_conn_id).connect()
        session = snowpark_session(self.snowflake_conn_id) if self.snowflake_conn_id else None
        train = connector_from_spec(
            {"table": self.table, "query": self.query, "path": self.path},
            session=session,
            storage_options=self.storage_options,
        )
        if train is None:
            raise ConfigError("give the training data as table=, query= or path=.")
        evals = connector_from_spec(
            {"table": self.eval_table, "query": self.eval_query, "path": self.eval_path},
            session=session,
            storage_options=self.storage_options,
            name="eval",
        )
        input_cols = (
            [c.strip() for c in self.input_cols.split(",")]
            if isinstance(self.input_cols, str)
            else list(self.input_cols)
        )
        estimator = self._estimator()
        estimator.fit(
            train,
            input_cols,
            self.label_col,
            eval_set=evals,
            verbose_eval=self.verbose_eval,
            artifact_stage_location=self.artifact_stage_location,
            request_id=request_id_for(context["ti"]),
            session=session,
            storage_options=self.storage_options,
        )
        artifact = estimator.get_artifact()
        self.log.info("model published to %s with metrics %s", artifact.uri, artifact.metrics)
        return artifact.to_dict()

    def on_kill(self) -> None:
        from shardtrain.runtime.worker_group import shutdown_workers

        shutdown_workers()


class XGBoostTrainOperator(_TrainOperator):
    """Train ``XGBEstimator`` on Ray; the XCom is the published model's artifact.

    Example:
        >>> train = XGBoostTrainOperator(                                 # doctest: +SKIP
        ...     task_id="train", table="TRAINING_DATA", snowflake_conn_id="snowflake_default",
        ...     input_cols=["AGE", "INCOME"], label_col="DEFAULT_RISK",
        ...     training_params={"max_depth": 6}, artifact_stage_location="@ML.PUBLIC.MODELS")
    """

    def __init__(self, *, objective: str = "reg:squarederror", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.objective = objective

    def _estimator(self):
        from shardtrain.config import FailureConfig
        from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig

        return XGBEstimator(
            n_estimators=self.n_estimators,
            objective=self.objective,
            params=dict(self.training_params),
            scaling_config=XGBScalingConfig(**self.scaling_config),
            failure_config=FailureConfig(**self.failure_config),
        )


class LightGBMTrainOperator(_TrainOperator):
    """Train ``LightGBMEstimator`` on Ray; the XCom is the published model's artifact."""

    def __init__(self, *, objective: str = "regression", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.objective = objective

    def _estimator(self):
        from shardtrain.config import FailureConfig
        from shardtrain.modeling.distributors.lightgbm import (
            LightGBMEstimator,
            LightGBMScalingConfig,
        )

        return LightGBMEstimator(
            n_estimators=self.n_estimators,
            objective=self.objective,
            params=dict(self.training_params),
            scaling_config=LightGBMScalingConfig(**self.scaling_config),
            failure_config=FailureConfig(**self.failure_config),
        )


def resolve_callable(target: Callable | str) -> Callable:
    """A callable, or an importable dotted path (``pkg.module.func`` or ``pkg.module:func``).

    A function from a module Ray workers cannot import (a DAG file is imported under a
    generated name) is registered to be pickled by value.
    """
    if isinstance(target, str):
        module_name, _, attr = target.replace(":", ".").rpartition(".")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(f"cannot import train_func {target!r}: {exc}") from exc
    if not callable(target):
        raise ConfigError(f"train_func must be callable or a dotted path, got {target!r}.")
    module = sys.modules.get(getattr(target, "__module__", "") or "")
    if module is not None and module.__name__ != "__main__":
        try:
            importable = importlib.util.find_spec(module.__name__) is not None
        except (ImportError, ValueError):
            importable = False
        if not importable:
            from ray import cloudpickle

            cloudpickle.register_pickle_by_value(module)
    return target


class PyTorchTrainOperator(BaseOperator):
    """Run ``PyTorchDistributor`` on Ray; the XCom is the published model's artifact.

    ``dataset_map`` maps names to ``{'table': ...}``, ``{'query': ...}`` or ``{'path': ...}``;
    ``scaling_config`` is ``{'num_nodes', 'num_workers_per_node',
    'resource_requirements_per_worker': {'num_cpus', 'num_gpus'}}``.
    """

    template_fields: Sequence[str] = ("dataset_map", "hyper_params", "artifact_stage_location")
    template_fields_renderers = {"dataset_map": "json", "hyper_params": "json"}
    operator_extra_links = (ModelLocationLink(),)
    ui_color = "#fdeee8"

    def __init__(
        self,
        *,
        train_func: Callable | str,
        dataset_map: dict[str, dict[str, Any]] | None = None,
        hyper_params: dict[str, Any] | None = None,
        scaling_config: dict[str, Any] | None = None,
        failure_config: dict[str, Any] | None = None,
        artifact_stage_location: str | None = None,
        ray_conn_id: str | None = None,
        snowflake_conn_id: str | None = None,
        storage_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.train_func = train_func
        self.dataset_map = dataset_map or {}
        self.hyper_params = hyper_params or {}
        self.scaling_config = scaling_config or {}
        self.failure_config = failure_config or {}
        self.artifact_stage_location = artifact_stage_location
        self.ray_conn_id = ray_conn_id
        self.snowflake_conn_id = snowflake_conn_id
        self.storage_options = storage_options

    def execute(self, context: Any) -> dict[str, Any] | None:
        from shardtrain.config import FailureConfig
        from shardtrain.modeling.distributors.pytorch import (
            PyTorchDistributor,
            PyTorchScalingConfig,
            WorkerResourceConfig,
        )

        RayHook(self.ray_conn_id).connect()
        session = snowpark_session(self.snowflake_conn_id) if self.snowflake_conn_id else None
        datasets = {
            name: connector_from_spec(
                spec, session=session, storage_options=self.storage_options, name=name
            )
            for name, spec in self.dataset_map.items()
        }
        scaling = dict(self.scaling_config)
        if isinstance(scaling.get("resource_requirements_per_worker"), dict):
            scaling["resource_requirements_per_worker"] = WorkerResourceConfig(
                **scaling["resource_requirements_per_worker"]
            )
        result = PyTorchDistributor(
            resolve_callable(self.train_func),
            scaling_config=PyTorchScalingConfig(**scaling),
            failure_config=FailureConfig(**self.failure_config),
        ).run(
            dataset_map=datasets,
            hyper_params=dict(self.hyper_params),
            artifact_stage_location=self.artifact_stage_location,
            request_id=request_id_for(context["ti"]),
            session=session,
            storage_options=self.storage_options,
        )
        artifact = result.get_artifact()
        if artifact is None:
            self.log.warning("train_func saved no model under get_model_dir(): nothing published")
            return None
        self.log.info("model published to %s with metrics %s", artifact.uri, artifact.metrics)
        return artifact.to_dict()

    def on_kill(self) -> None:
        from shardtrain.runtime.worker_group import shutdown_workers

        shutdown_workers()


class RegisterModelOperator(BaseOperator):
    """Register a trained model (a training task's XCom) in a model registry.

    ``model`` is the artifact dict a training operator returned (``train.output``) or a model
    URI; ``registry`` is None/``"mlflow"`` (the embedded sqlite MLflow registry), an MLflow
    tracking URI, or ``"snowflake"`` (with ``snowflake_conn_id``). A retried task (same
    artifact) returns the version it already registered. The XCom is the
    ``RegisteredModel`` as a dict.
    """

    template_fields: Sequence[str] = ("model", "name", "registry", "version", "tags")
    ui_color = "#eefde8"

    def __init__(
        self,
        *,
        model: Any,
        name: str,
        registry: str | None = None,
        version: str | None = None,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        module: Any = None,
        snowflake_conn_id: str | None = None,
        storage_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model, self.name, self.registry, self.version = model, name, registry, version
        self.metrics, self.tags, self.module = metrics, tags, module
        self.snowflake_conn_id = snowflake_conn_id
        self.storage_options = storage_options

    def execute(self, context: Any) -> dict[str, Any]:
        from shardtrain.registry import register_model

        session = snowpark_session(self.snowflake_conn_id) if self.snowflake_conn_id else None
        module = self.module
        if module is not None and not hasattr(module, "load_state_dict"):
            module = resolve_callable(module)()  # a class or factory (or its dotted path)
        registered = register_model(
            self.model,
            name=self.name,
            registry=self.registry,
            version=self.version,
            metrics=self.metrics,
            tags=self.tags,
            session=session,
            storage_options=self.storage_options,
            module=module,
        )
        self.log.info(
            "registered model: %s version %s (%s) from %s",
            registered.name,
            registered.version,
            registered.model_uri,
            registered.source_uri,
        )
        return registered.to_dict()
