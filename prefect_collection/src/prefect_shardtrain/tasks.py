"""Prefect tasks: train on Ray and return the model's ``ModelArtifact``; register it.

Each training task turns its arguments into a ``TrainingSpec`` and runs it with
``shardtrain.integrations.run_training`` in the task's process, or, when the ``RayCluster``
block says so (``job_server`` / ``use_jobs``) or the task is given ``as_job=True``, submits it
as a Ray Job: a retried task run reattaches to its job (the submission id derives from the
request id), the job's log lines go to the run's log as they come, and the artifact is read
from the stage's manifest. What stays here is Prefect's own: blocks, request ids from the
flow and task run, logging to the run's log, and Prefect artifacts.
"""

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.exceptions import MissingContextError

from prefect_shardtrain.artifacts import (
    artifact_key,
    progress_bar,
    publish_curves,
    publish_dashboard,
)
from prefect_shardtrain.assets import declare_registration, declare_training, record_model
from prefect_shardtrain.blocks import ModelStage, RayCluster
from prefect_shardtrain.library_logs import library_logs
from shardtrain import DataConnector, ModelArtifact
from shardtrain.errors import ConfigError
from shardtrain.integrations import (
    TrainingSpec,
    closing_session,
    request_id_from,
    resolve_module,
    run_training,
)
from shardtrain.jobs import submit
from shardtrain.model.registry import RegisteredModel, registry_libraries
from shardtrain.model.registry import register_model as register
from shardtrain.runtime.dashboard import dashboard_url

#: Data as tasks take it: a Parquet path, {"table"|"query"|"path": ...}, or a DataConnector.
TrainingData = str | dict[str, str] | DataConnector
if TYPE_CHECKING:
    from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials

    SnowflakeBlock: TypeAlias = SnowflakeConnector | SnowflakeCredentials
else:
    try:  # the `snowflake` extra (prefect-snowflake)
        from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials

        SnowflakeBlock = SnowflakeConnector | SnowflakeCredentials
    except ImportError:
        SnowflakeBlock = Any


def request_id() -> str:
    """The flow run and task run identity: the same for every retry of one task run."""
    from prefect.runtime import flow_run, task_run

    return request_id_from(
        f"{flow_run.get_name() or flow_run.get_id()}__{task_run.get_name()}",
        unique=str(task_run.get_id()),
        prefix="prefect-",
    )


class ToTaskRunLog(logging.Handler):
    """shardtrain's records to the log of the task run whose thread emitted them.

    One handler serves every task run of the process: the run logger is looked up in the
    emitting thread's run context (Prefect's context variables), so two task runs training at
    once in threads each get their own lines, not the other's. A record from a thread outside
    any run goes to the root logger's handlers, as it would without this handler.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            run_logger = get_run_logger()
        except MissingContextError:
            logging.getLogger().callHandlers(record)
            return
        run_logger.log(record.levelno, record.getMessage())


_forwarding_lock = threading.Lock()
_forwarding: dict[str, Any] = {"users": 0}


@contextlib.contextmanager
def forwarded_logs() -> Iterator[None]:
    """Send shardtrain's progress (per-round metrics) to this task run's log.

    The handler is installed by the first task run of the process that enters and removed,
    with the logger's level and propagation restored, by the last one that leaves (counted:
    concurrent task runs enter and leave in any order).
    """
    source = logging.getLogger("shardtrain")
    with _forwarding_lock:
        if _forwarding["users"] == 0:
            _forwarding.update(
                handler=ToTaskRunLog(logging.INFO), level=source.level, propagate=source.propagate
            )
            source.addHandler(_forwarding["handler"])
            source.setLevel(logging.INFO)
            # Not also to the root logger's handlers: Prefect's console would print each
            # line twice (ToTaskRunLog passes records from outside any run on to them).
            source.propagate = False
        _forwarding["users"] += 1
    try:
        yield
    finally:
        with _forwarding_lock:
            _forwarding["users"] -= 1
            if _forwarding["users"] == 0:
                source.removeHandler(_forwarding.pop("handler"))
                source.setLevel(_forwarding.pop("level"))
                source.propagate = _forwarding.pop("propagate")


def publish_artifacts(artifact: ModelArtifact) -> None:
    """A table of final metrics and a markdown note with the model's location."""
    record_model(artifact)  # the model asset's metadata: final metrics
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
    publish_curves(artifact)  # the per-round metrics as an image, beside the table


def _split(named: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, DataConnector]]:
    """Data a spec can name (paths, tables, queries) apart from connectors held in process."""
    specs = {k: v for k, v in named.items() if not isinstance(v, DataConnector)}
    held = {k: v for k, v in named.items() if isinstance(v, DataConnector)}
    return specs, held


def _run(
    spec: TrainingSpec,
    *,
    ray_cluster: RayCluster | None,
    stage: ModelStage,
    snowflake: SnowflakeBlock | None,
    train_func: Callable | None = None,
    held: Mapping[str, DataConnector] | None = None,
    as_job: bool | None = None,
) -> ModelArtifact | None:
    """Open what the run needs (Ray, the stage's and the data's Snowpark sessions), run it,
    close the sessions whatever happens, and report the model in the run's log and artifacts."""
    if stage.needs_session and not stage.has_snowflake:
        raise ConfigError(
            f"the stage {stage.uri!r} is a Snowflake stage: give the ModelStage "
            "snowflake_credentials (or local_testing=True)."
        )
    declare_training(spec, snowflake or stage.snowflake_credentials)  # data -> model assets
    cluster = ray_cluster or RayCluster()
    if cluster.uses_jobs() if as_job is None else as_job:
        return _run_as_job(spec, cluster=cluster, stage=stage, train_func=train_func, held=held)
    reads_snowflake = any(d.needs_session for d in spec.data.values())
    if reads_snowflake and snowflake is None and not stage.has_snowflake:
        raise ConfigError(
            "the training data is a Snowflake table or query: pass snowflake= (a "
            "prefect-snowflake SnowflakeConnector or SnowflakeCredentials block) to the task."
        )
    with contextlib.ExitStack() as opened:
        opened.enter_context(library_logs("ray"))  # Ray's lines in the run's log, at their level
        cluster.connect()
        publish_dashboard(spec.request_id, dashboard_url())
        session = opened.enter_context(stage.open_session()) if stage.needs_session else None
        data_session = None
        if reads_snowflake:
            if snowflake is not None:
                from prefect_shardtrain.snowflake import open_snowpark_session

                data_session = opened.enter_context(
                    closing_session(open_snowpark_session(snowflake))
                )
            else:  # no data block: the stage's credentials read the data, as they always did
                data_session = session or opened.enter_context(stage.open_session())
        with forwarded_logs(), progress_bar(spec.request_id):
            artifact = run_training(
                spec,
                session=session,
                data_session=data_session,
                storage_options=stage.options(),
                train_func=train_func,
                data=held,
            )
    if artifact is not None:
        get_run_logger().info("model published to %s", artifact.uri)
        publish_artifacts(artifact)
    return artifact


def _run_as_job(
    spec: TrainingSpec,
    *,
    cluster: RayCluster,
    stage: ModelStage,
    train_func: Callable | None,
    held: Mapping[str, DataConnector] | None,
) -> ModelArtifact | None:
    """Submit (or reattach to) the run's Ray Job, forward its log, read the model back."""
    if train_func is not None or held:
        raise ConfigError(
            "a Ray Job carries its run as plain data: give train_func as a dotted path "
            "('package.module:function') and data as paths, tables or queries, not objects "
            "held in this process."
        )
    spec = dataclasses.replace(spec, snowflake_connection=cluster.snowflake_connection)
    spec.check_complete()
    logger = get_run_logger()
    handle = submit(spec, cluster.job_target())
    verb = "reattached to" if handle.reattached else "submitted"
    logger.info("%s Ray job %s: %s", verb, handle.submission_id, handle.dashboard_url)
    create_markdown_artifact(
        markdown=f"Ray job [`{handle.submission_id}`]({handle.dashboard_url})",
        key=f"ray-job-{artifact_key(spec.request_id)}",
        description="The Ray job training this model",
    )
    publish_dashboard(spec.request_id, handle.dashboard_url, "Ray job")

    def on_log(line: str) -> None:
        logger.info("[ray job] %s", line)
        bar.from_log(line)  # the job's progress lines move the bar

    with progress_bar(spec.request_id) as bar:
        handle.wait(poll_s=1.0, on_log=on_log)
    with stage.open_session() as session:
        artifact = handle.result(session=session, storage_options=stage.options())
    if artifact is not None:
        logger.info("model published to %s", artifact.uri)
        publish_artifacts(artifact)
    return artifact


def boosting_spec(
    framework: str,
    data: TrainingData,
    input_cols: list[str],
    label_col: str,
    eval_data: TrainingData | None,
    params: dict[str, Any] | None,
    n_estimators: int,
    objective: str,
    scaling_config: dict[str, Any] | None,
    failure_config: dict[str, Any] | None,
    stage: ModelStage,
    verbose_eval: int | None,
    request_id: str,
) -> tuple[TrainingSpec, dict[str, DataConnector]]:
    """A boosting task's arguments as a TrainingSpec (and the connectors held in process)."""
    specs, held = _split({"train": data, "eval": eval_data})
    if specs.get("train") is None and "train" not in held:
        raise ConfigError(
            "no training data: give a Parquet path, {'table': ...}, {'query': ...} or a "
            "DataConnector."
        )
    spec = TrainingSpec(
        framework=framework,
        request_id=request_id,
        artifact_stage_location=stage.uri,
        train_data=specs.get("train"),
        eval_data=specs.get("eval"),
        input_cols=tuple(input_cols),
        label_col=label_col,
        n_estimators=n_estimators,
        objective=objective,
        params=params or {},
        verbose_eval=verbose_eval,
        scaling_config=scaling_config or {},
        failure_config=failure_config or {},
    )
    return spec, held


# Results are persisted under the task run's id (a later process reads the artifact back from
# the run), never found again as a cache: each call trains; a retry resumes from checkpoints.
# (cache_policy=NO_CACHE would write nothing: Prefect persists only results that have a key.)
RESULT_KEY = "shardtrain-{task_run.id}"


@task(name="train_xgboost", retries=0, persist_result=True, result_storage_key=RESULT_KEY)
def train_xgboost(
    data: TrainingData,
    input_cols: list[str],
    label_col: str,
    eval_data: TrainingData | None = None,
    params: dict[str, Any] | None = None,
    n_estimators: int = 100,
    objective: str = "reg:squarederror",
    scaling_config: dict[str, Any] | None = None,
    failure_config: dict[str, Any] | None = None,
    ray_cluster: RayCluster | None = None,
    stage: ModelStage | None = None,
    verbose_eval: int | None = 10,
    snowflake: SnowflakeBlock | None = None,
    as_job: bool | None = None,
) -> ModelArtifact:
    """Train XGBoost on Ray; returns the published model's ``ModelArtifact``.

    ``snowflake`` (a prefect-snowflake block) reads table and query data; without it, the
    stage's Snowflake credentials do. ``as_job``: run as a Ray Job (default: as the
    ``RayCluster`` block says).
    """
    stage = stage or ModelStage()
    spec, held = boosting_spec(
        "xgboost", data, input_cols, label_col, eval_data, params, n_estimators, objective,
        scaling_config, failure_config, stage, verbose_eval, request_id(),
    )  # fmt: skip
    artifact = _run(
        spec, ray_cluster=ray_cluster, stage=stage, snowflake=snowflake, held=held, as_job=as_job
    )
    assert artifact is not None  # a boosting run always publishes its model
    return artifact


@task(name="train_lightgbm", retries=0, persist_result=True, result_storage_key=RESULT_KEY)
def train_lightgbm(
    data: TrainingData,
    input_cols: list[str],
    label_col: str,
    eval_data: TrainingData | None = None,
    params: dict[str, Any] | None = None,
    n_estimators: int = 100,
    objective: str = "regression",
    scaling_config: dict[str, Any] | None = None,
    failure_config: dict[str, Any] | None = None,
    ray_cluster: RayCluster | None = None,
    stage: ModelStage | None = None,
    verbose_eval: int | None = 10,
    snowflake: SnowflakeBlock | None = None,
    as_job: bool | None = None,
) -> ModelArtifact:
    """Train LightGBM on Ray; returns the published model's ``ModelArtifact`` (``as_job``: as
    ``train_xgboost``)."""
    stage = stage or ModelStage()
    spec, held = boosting_spec(
        "lightgbm", data, input_cols, label_col, eval_data, params, n_estimators, objective,
        scaling_config, failure_config, stage, verbose_eval, request_id(),
    )  # fmt: skip
    artifact = _run(
        spec, ray_cluster=ray_cluster, stage=stage, snowflake=snowflake, held=held, as_job=as_job
    )
    assert artifact is not None  # a boosting run always publishes its model
    return artifact


def pytorch_spec(
    train_func: Callable | str,
    dataset_map: Mapping[str, TrainingData] | None,
    hyper_params: dict[str, Any] | None,
    scaling_config: dict[str, Any] | None,
    failure_config: dict[str, Any] | None,
    stage: ModelStage,
    request_id: str,
) -> tuple[TrainingSpec, dict[str, DataConnector]]:
    """A PyTorch task's arguments as a TrainingSpec (and the connectors held in process)."""
    specs, held = _split(dataset_map or {})
    spec = TrainingSpec(
        framework="pytorch",
        request_id=request_id,
        artifact_stage_location=stage.uri,
        train_func=train_func if isinstance(train_func, str) else None,
        dataset_map=specs,
        hyper_params=hyper_params or {},
        scaling_config=scaling_config or {},
        failure_config=failure_config or {},
    )
    return spec, held


@task(name="train_pytorch", retries=0, persist_result=True, result_storage_key=RESULT_KEY)
def train_pytorch(
    train_func: Callable | str,
    dataset_map: dict[str, TrainingData] | None = None,
    hyper_params: dict[str, Any] | None = None,
    scaling_config: dict[str, Any] | None = None,
    failure_config: dict[str, Any] | None = None,
    ray_cluster: RayCluster | None = None,
    stage: ModelStage | None = None,
    snowflake: SnowflakeBlock | None = None,
    as_job: bool | None = None,
) -> ModelArtifact | None:
    """Run ``PyTorchDistributor`` on Ray; returns rank 0's published model artifact.

    ``train_func`` is a callable or an importable dotted path (``pkg.module:func``; a Ray
    Job, ``as_job``, needs the dotted path).
    """
    stage = stage or ModelStage()
    spec, held = pytorch_spec(
        train_func, dataset_map, hyper_params, scaling_config, failure_config, stage, request_id()
    )
    return _run(
        spec,
        ray_cluster=ray_cluster,
        stage=stage,
        snowflake=snowflake,
        train_func=None if isinstance(train_func, str) else train_func,
        held=held,
        as_job=as_job,
    )


@task(name="register_model", retries=0, persist_result=True, result_storage_key=RESULT_KEY)
def register_model(
    artifact: ModelArtifact | dict | str,
    name: str,
    registry: str | None = None,
    version: str | None = None,
    tags: dict[str, str] | None = None,
    module: Any = None,
    stage: ModelStage | None = None,
) -> RegisteredModel:
    """Register a trained model (a training task's result) in MLflow or Snowflake.

    ``module`` is the ``torch.nn.Module`` for a PyTorch state dict: an instance, a class or
    factory, or its dotted path.
    """
    stage = stage or ModelStage()
    libraries = registry_libraries(registry)  # its events in the run's log
    with stage.open_session() as session, library_logs(*libraries):
        registered = register(
            artifact,
            name=name,
            registry=registry,
            version=version,
            tags=tags,
            session=session,
            storage_options=stage.options(),
            module=resolve_module(module),
        )
    get_run_logger().info(
        "registered model: %s version %s (%s)",
        registered.name,
        registered.version,
        registered.model_uri,
    )
    declare_registration(registered, registry, stage.snowflake_credentials)  # model -> entry
    return registered
