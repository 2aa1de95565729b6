"""Prefect tasks: train on Ray and return the model's ``ModelArtifact``; register it."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from prefect_shardtrain.blocks import ModelStage, RayCluster
from shardtrain.artifact import ModelArtifact, request_id_from
from shardtrain.data.data_connector import DataConnector
from shardtrain.data.spec import connector_from_spec
from shardtrain.registry import RegisteredModel

DataSpec = str | dict[str, str] | DataConnector


def request_id() -> str:
    """The flow run and task run identity: the same for every retry of one task run."""
    from prefect.runtime import flow_run, task_run

    return request_id_from(
        f"{flow_run.get_name() or flow_run.get_id()}__{task_run.get_name()}",
        unique=str(task_run.get_id()),
        prefix="prefect-",
    )


@contextlib.contextmanager
def forwarded_logs() -> Iterator[None]:
    """Send shardtrain's progress (per-round metrics) to this task run's log."""
    run_logger = get_run_logger()

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            run_logger.log(record.levelno, record.getMessage())

    handler = Forward(logging.INFO)
    source = logging.getLogger("shardtrain")
    source.addHandler(handler)
    level, source.level = source.level, logging.INFO
    try:
        yield
    finally:
        source.removeHandler(handler)
        source.setLevel(level)


def artifact_key(request_id: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", request_id.lower())[:90].strip("-")


def publish_artifacts(artifact: ModelArtifact) -> None:
    """A table of final metrics and a markdown note with the model's location."""
    rows = [
        {"data set": s, "metric": m, "value": v}
        for s, ms in artifact.metrics.items()
        for m, v in ms.items()
    ]
    key = artifact_key(artifact.request_id)
    create_table_artifact(
        table=rows or [{"data set": "-", "metric": "-", "value": None}],
        key=f"metrics-{key}",
        description=f"Final metrics of {artifact.uri}",
    )
    create_markdown_artifact(
        markdown=f"**{artifact.framework} model** published to `{artifact.uri}`\n\n"
        f"request id `{artifact.request_id}`, files: "
        + ", ".join(f"`{f['path']}`" for f in artifact.files),
        key=f"model-{key}",
        description="Where the trained model is",
    )


def _train_gbdt(
    estimator_factory: Callable,
    data: DataSpec,
    input_cols: list[str],
    label_col: str,
    eval_data: DataSpec | None,
    ray_cluster: RayCluster | None,
    stage: ModelStage | None,
    verbose_eval: int | None,
) -> ModelArtifact:
    stage = stage or ModelStage()
    (ray_cluster or RayCluster()).connect()
    session = stage.session()
    options = stage.options()
    with forwarded_logs():
        estimator = estimator_factory()
        estimator.fit(
            connector_from_spec(data, session=session, storage_options=options),
            input_cols,
            label_col,
            eval_set=connector_from_spec(
                eval_data, session=session, storage_options=options, name="eval"
            ),
            verbose_eval=verbose_eval,
            artifact_stage_location=stage.uri,
            request_id=request_id(),
            session=session,
            storage_options=options,
        )
    artifact = estimator.get_artifact()
    get_run_logger().info("model published to %s", artifact.uri)
    publish_artifacts(artifact)
    return artifact


@task(name="train_xgboost", retries=0)
def train_xgboost(
    data: DataSpec,
    input_cols: list[str],
    label_col: str,
    eval_data: DataSpec | None = None,
    params: dict[str, Any] | None = None,
    n_estimators: int = 100,
    objective: str = "reg:squarederror",
    scaling_config: dict[str, Any] | None = None,
    failure_config: dict[str, Any] | None = None,
    ray_cluster: RayCluster | None = None,
    stage: ModelStage | None = None,
    verbose_eval: int | None = 10,
) -> ModelArtifact:
    """Train XGBoost on Ray; returns the published model's ``ModelArtifact``."""
    from shardtrain.config import FailureConfig
    from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig

    return _train_gbdt(
        lambda: XGBEstimator(
            n_estimators=n_estimators,
            objective=objective,
            params=params,
            scaling_config=XGBScalingConfig(**(scaling_config or {})),
            failure_config=FailureConfig(**(failure_config or {})),
        ),
        data,
        input_cols,
        label_col,
        eval_data,
        ray_cluster,
        stage,
        verbose_eval,
    )


@task(name="train_lightgbm", retries=0)
def train_lightgbm(
    data: DataSpec,
    input_cols: list[str],
    label_col: str,
    eval_data: DataSpec | None = None,
    params: dict[str, Any] | None = None,
    n_estimators: int = 100,
    objective: str = "regression",
    scaling_config: dict[str, Any] | None = None,
    failure_config: dict[str, Any] | None = None,
    ray_cluster: RayCluster | None = None,
    stage: ModelStage | None = None,
    verbose_eval: int | None = 10,
) -> ModelArtifact:
    """Train LightGBM on Ray; returns the published model's ``ModelArtifact``."""
    from shardtrain.config import FailureConfig
    from shardtrain.modeling.distributors.lightgbm import (
        LightGBMEstimator,
        LightGBMScalingConfig,
    )

    return _train_gbdt(
        lambda: LightGBMEstimator(
            n_estimators=n_estimators,
            objective=objective,
            params=params,
            scaling_config=LightGBMScalingConfig(**(scaling_config or {})),
            failure_config=FailureConfig(**(failure_config or {})),
        ),
        data,
        input_cols,
        label_col,
        eval_data,
        ray_cluster,
        stage,
        verbose_eval,
    )


@task(name="train_pytorch", retries=0)
def train_pytorch(
    train_func: Callable,
    dataset_map: dict[str, DataSpec] | None = None,
    hyper_params: dict[str, Any] | None = None,
    scaling_config: dict[str, Any] | None = None,
    failure_config: dict[str, Any] | None = None,
    ray_cluster: RayCluster | None = None,
    stage: ModelStage | None = None,
) -> ModelArtifact | None:
    """Run ``PyTorchDistributor`` on Ray; returns rank 0's published model artifact."""
    from shardtrain.config import FailureConfig
    from shardtrain.modeling.distributors.pytorch import (
        PyTorchDistributor,
        PyTorchScalingConfig,
        WorkerResourceConfig,
    )

    stage = stage or ModelStage()
    (ray_cluster or RayCluster()).connect()
    session, options = stage.session(), stage.options()
    scaling = dict(scaling_config or {})
    if isinstance(scaling.get("resource_requirements_per_worker"), dict):
        scaling["resource_requirements_per_worker"] = WorkerResourceConfig(
            **scaling["resource_requirements_per_worker"]
        )
    with forwarded_logs():
        result = PyTorchDistributor(
            train_func,
            scaling_config=PyTorchScalingConfig(**scaling),
            failure_config=FailureConfig(**(failure_config or {})),
        ).run(
            dataset_map={
                n: connector_from_spec(s, session=session, storage_options=options, name=n)
                for n, s in (dataset_map or {}).items()
            },
            hyper_params=hyper_params,
            artifact_stage_location=stage.uri,
            request_id=request_id(),
            session=session,
            storage_options=options,
        )
    artifact = result.get_artifact()
    if artifact is not None:
        get_run_logger().info("model published to %s", artifact.uri)
        publish_artifacts(artifact)
    return artifact


@task(name="register_model", retries=0)
def register_model(
    artifact: ModelArtifact | dict | str,
    name: str,
    registry: str | None = None,
    version: str | None = None,
    tags: dict[str, str] | None = None,
    module: Any = None,
    stage: ModelStage | None = None,
) -> RegisteredModel:
    """Register a trained model (a training task's result) in MLflow or Snowflake."""
    from shardtrain.registry import register_model as register

    stage = stage or ModelStage()
    module = module() if callable(module) and not hasattr(module, "load_state_dict") else module
    registered = register(
        artifact,
        name=name,
        registry=registry,
        version=version,
        tags=tags,
        session=stage.session(),
        storage_options=stage.options(),
        module=module,
    )
    get_run_logger().info(
        "registered model: %s version %s (%s)",
        registered.name,
        registered.version,
        registered.model_uri,
    )
    return registered
