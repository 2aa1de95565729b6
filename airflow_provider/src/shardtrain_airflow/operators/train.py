"""Training operators: each turns its (templated) arguments into a ``TrainingSpec`` and runs it;
the XCom is ``ModelArtifact.to_dict()`` whichever way it ran.

Three ways to run, one result:

- in process (the default without a job server): ``run_training`` in the worker's process;
- as a Ray Job, waiting in the worker (``run_as_job=True``, or a ``ray`` connection with a
  ``job_server``): the spec is submitted with a submission id derived from the request id, so
  a retried or restarted task reattaches to its job instead of training twice;
- deferred (``deferrable=True``, default ``[operators] default_deferrable``): the same job,
  waited for by ``RayJobTrigger`` in the triggerer, which streams the job's log into the task
  log; ``execute_complete`` reads the artifact from the stage's manifest.

A killed task (marked failed, cleared, timed out) stops its job and waits for it to end
(bounded); the next try never reattaches to a job whose stop shardtrain requested: it starts
the next attempt, which resumes from the run's checkpoint. The job's log is forwarded once:
the offset already forwarded goes with the trigger and its event, is kept in the task's
state store (``task_state_store``, kept across tries) for a retry that reattaches, and the
trigger records its progress in a file keyed by the job (``shardtrain.jobs.conventions``'s
``write_log_offset``) for a trigger started again by a triggerer restart, or a retry on the
same host after a triggerer that stopped before its event.

Operators own orchestration (connections, request ids, templating, links, kill); core owns
the work, so nothing here builds an estimator.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from shardtrain.errors import ConfigError
from shardtrain.integrations import TrainingSpec, request_id_from, run_training, shutdown_workers
from shardtrain.integrations.spec import is_snowflake_stage
from shardtrain.jobs import STOPPED, TERMINAL, JobHandle, JobStoppedError, submit
from shardtrain.jobs.conventions import forget_log_offset, read_log_offset
from shardtrain.jobs.submit import with_stage
from shardtrain_airflow.hooks.ray import RayHook
from shardtrain_airflow.hooks.snowpark import optional_session
from shardtrain_airflow.library_logs import library_logs
from shardtrain_airflow.links import (
    RAY_JOB_XCOM,
    ModelLocationLink,
    RayDashboardLink,
    RayJobLink,
    TrainingCurveLink,
    record_dashboard,
)
from shardtrain_airflow.triggers.ray_job import RayJobTrigger

try:  # Airflow 3.1+
    from airflow.sdk.configuration import conf
except ImportError:  # pragma: no cover - Airflow 3.0
    from airflow.configuration import conf


#: Seconds ``on_kill`` waits for a stopped job to end: Airflow's task supervisor sends SIGKILL
#: 5 s after the SIGTERM that runs ``on_kill``.
KILL_STOP_WAIT_S = 4.0
#: How many new jobs one try starts after finding its job stopped by an earlier try's kill.
MAX_RESTARTS_AFTER_STOP = 3
#: Key, in the task's state store, of the job's log offset: ``{"submission_id", "offset"}``.
LOG_OFFSET_STATE = "shardtrain_ray_job_log"


def _state_store(context: Any) -> Any:
    try:
        return context["task_state_store"]  # Airflow 3.3+: kept across a task's tries
    except (KeyError, TypeError):
        return None


def saved_log_offset(context: Any, submission_id: str) -> int:
    """Characters of ``submission_id``'s log an earlier try (or trigger) forwarded."""
    store = _state_store(context)
    if store is None:
        return 0
    try:
        value = store.get(LOG_OFFSET_STATE)
    except Exception:  # noqa: BLE001 - no state store: forward from the start
        logging.getLogger(__name__).debug("no task state store", exc_info=True)
        return 0
    if isinstance(value, dict) and value.get("submission_id") == submission_id:
        return int(value.get("offset") or 0)
    return 0


def save_log_offset(context: Any, submission_id: str, offset: int) -> bool:
    """Keep the offset in the task's state store for a later try: True when it was kept."""
    store = _state_store(context)
    if store is None:
        return False
    try:
        store.set(LOG_OFFSET_STATE, {"submission_id": submission_id, "offset": offset})
    except Exception:  # noqa: BLE001 - best effort: at worst a retry forwards lines again
        logging.getLogger(__name__).debug("could not save the log offset", exc_info=True)
        return False
    return True


def recorded_log_offset(handle: JobHandle) -> int:
    """Characters of the job's log a trigger forwarded, as it recorded them in its file on
    this host (``read_log_offset``, keyed by the job and its start time); 0 when none."""
    try:
        started = handle.client.get_job_info(handle.submission_id).start_time
        return read_log_offset(handle.submission_id, started)
    except Exception:  # noqa: BLE001 - best effort: at worst lines are forwarded again
        logging.getLogger(__name__).debug("no recorded log offset", exc_info=True)
        return 0


def request_id_for(ti: Any) -> str:
    """dag_id, run_id and task_id (and map index) as a folder name: the same for every try of
    one task instance, different for any other run or task."""
    identity = f"{ti.dag_id}__{ti.run_id}__{ti.task_id}"
    if getattr(ti, "map_index", -1) not in (None, -1):
        identity += f"__{ti.map_index}"
    return request_id_from(identity)


class TrainOperator(BaseOperator):
    """What every training operator shares: the Ray and Snowflake connections, the stage,
    scaling and failure configs, the model link and ``on_kill``.

    Subclasses set ``framework`` and return their own spec fields from ``spec_fields()``.
    """

    framework: str = ""
    template_fields: Sequence[str] = ("artifact_stage_location",)
    operator_extra_links = (
        ModelLocationLink(),
        RayJobLink(),
        TrainingCurveLink(),
        RayDashboardLink(),
    )

    def __init__(
        self,
        *,
        scaling_config: dict[str, Any] | None = None,
        failure_config: dict[str, Any] | None = None,
        artifact_stage_location: str | None = None,
        ray_conn_id: str | None = None,
        snowflake_conn_id: str | None = None,
        storage_options: dict[str, Any] | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        run_as_job: bool | None = None,
        poll_interval: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deferrable = deferrable
        self.run_as_job = run_as_job  # None: as the ray connection says (a job_server: jobs)
        self.poll_interval = poll_interval
        self._job: JobHandle | None = None
        self._killed = False  # on_kill ran in this process: a STOPPED job is this try's own
        self.scaling_config = scaling_config or {}
        self.failure_config = failure_config or {}
        self.artifact_stage_location = artifact_stage_location
        self.ray_conn_id = ray_conn_id
        self.snowflake_conn_id = snowflake_conn_id
        self.storage_options = storage_options

    def spec_fields(self) -> dict[str, Any]:
        """The framework's own TrainingSpec fields, from the rendered arguments."""
        raise NotImplementedError

    def train_callable(self) -> Callable | None:
        """A callable held in process that the spec cannot carry (PyTorch's train_func)."""
        return None

    def training_spec(self, context: Any) -> TrainingSpec:
        """The run this task instance stands for (call after templates are rendered)."""
        spec = TrainingSpec(
            framework=self.framework,
            request_id=request_id_for(context["ti"]),
            artifact_stage_location=self.artifact_stage_location or None,
            scaling_config=self.scaling_config,
            failure_config=self.failure_config,
            **self.spec_fields(),
        )
        if (
            spec.needs_session
            and not self.snowflake_conn_id
            and not self._cluster_reads_snowflake()
        ):
            raise ConfigError(
                f"task {self.task_id!r} reads a Snowflake table or query or publishes to a "
                "Snowflake stage, which needs a Snowpark session: set snowflake_conn_id."
            )
        return spec

    def _cluster_reads_snowflake(self) -> bool:
        """A job whose cluster reads Snowflake with its own named connection needs no session
        here, unless the model goes to a Snowflake stage this task must read back."""
        if is_snowflake_stage(self.artifact_stage_location) or not self.uses_jobs():
            return False
        return bool(RayHook(self.ray_conn_id).snowflake_connection())

    def uses_jobs(self) -> bool:
        """Deferred, asked to, or told so by the ray connection (it names a job server)."""
        if self.deferrable or self.run_as_job:
            return True
        return self.run_as_job is None and RayHook(self.ray_conn_id).uses_jobs()

    def execute(self, context: Any) -> dict[str, Any] | None:
        with library_logs("ray"):  # Ray's info lines at info in the task log, not at error
            return self._execute(context)

    def _execute(self, context: Any) -> dict[str, Any] | None:
        spec = self.training_spec(context)
        if self.uses_jobs():
            return self._execute_as_job(spec, context)
        conn_id = self.snowflake_conn_id if spec.needs_session else None
        with optional_session(conn_id) as session:
            RayHook(self.ray_conn_id).connect()
            record_dashboard(context, self.log)
            try:
                artifact = run_training(
                    spec,
                    session=session,
                    storage_options=self.storage_options,
                    train_func=self.train_callable(),
                )
            except Exception as exc:
                if not self._killed:
                    raise
                # Our own on_kill stopped the workers: say so, not "a worker died (killed,
                # or out of memory)". An ordinary failure: a try killed by a shutdown, not by
                # the user, is retried as before.
                raise AirflowException(
                    f"task {self.task_id!r} was killed (marked failed, cleared or timed out): "
                    f"on_kill stopped its Ray workers, and the fit ended with "
                    f"{type(exc).__name__}"
                ) from exc
        return self._returned(artifact)

    def _execute_as_job(self, spec: TrainingSpec, context: Any) -> dict[str, Any] | None:
        if self.train_callable() is not None:
            raise ConfigError(
                f"task {self.task_id!r} runs as a Ray Job, which imports train_func on the "
                "cluster: give it as a dotted path ('package.module:function'), not a function "
                "object."
            )
        hook = RayHook(self.ray_conn_id)
        spec = dataclasses.replace(spec, snowflake_connection=hook.snowflake_connection())
        spec.check_complete()
        target = hook.job_target()
        for restart in range(MAX_RESTARTS_AFTER_STOP + 1):
            handle = self._submit(spec, target, context)
            if self.deferrable and handle.status() not in TERMINAL:
                self.defer(
                    trigger=RayJobTrigger(
                        submission_id=handle.submission_id,
                        spec=handle.spec.to_dict(),
                        ray_conn_id=self.ray_conn_id,
                        poll_interval=self.poll_interval,
                        log_offset=handle.log_offset,
                        job_server=target.address,  # its token: read by the trigger
                    ),
                    method_name="execute_complete",
                )
            try:
                handle.wait(
                    poll_s=self.poll_interval,
                    on_log=self._job_log,
                    on_offset=functools.partial(save_log_offset, context, handle.submission_id),
                )
            except JobStoppedError:
                if restart == MAX_RESTARTS_AFTER_STOP or not self._stopped_by_a_kill(handle):
                    raise
                continue
            return self._collect(handle)
        raise AssertionError("unreachable")  # pragma: no cover

    def _submit(self, spec: TrainingSpec, target: Any, context: Any) -> JobHandle:
        """Submit the spec's job, or reattach to it (from the log offset an earlier try
        reached); record it for the links and ``on_kill``."""
        self._job = handle = submit(spec, target)
        if handle.reattached:
            handle.log_offset = max(
                saved_log_offset(context, handle.submission_id), recorded_log_offset(handle)
            )
        self.log.info(
            "%s Ray job %s (request %s): %s",
            "reattached to" if handle.reattached else "submitted",
            handle.submission_id,
            spec.request_id,
            handle.dashboard_url,
        )
        context["ti"].xcom_push(
            key=RAY_JOB_XCOM,
            value={"submission_id": handle.submission_id, "dashboard_url": handle.dashboard_url},
        )
        return handle

    def _stopped_by_a_kill(self, handle: JobHandle) -> bool:
        """A job that ended STOPPED because an earlier try was killed (shardtrain asked for
        the stop; this try was not killed, or it would not be here): start the next attempt.
        A job a user stopped on the cluster fails the task, and so does this try's own
        ``on_kill`` (Airflow's SIGTERM handler returns into ``execute``)."""
        if self._killed or not handle.stop_requested():
            return False
        self.log.info(
            "Ray job %s (request %s) was stopped by the kill of an earlier try: starting the "
            "next attempt",
            handle.submission_id,
            handle.spec.request_id,
        )
        return True

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any] | None:
        """Back from the triggerer: the job ended; its model comes from the stage."""
        hook = RayHook(self.ray_conn_id)
        target = hook.job_target()
        if "spec" in event:  # an event of an earlier version of the trigger
            spec = TrainingSpec.from_dict(event["spec"])
        else:
            spec = self.training_spec(context)
            spec = dataclasses.replace(spec, snowflake_connection=hook.snowflake_connection())
            spec = with_stage(spec, target)
        handle = JobHandle(event["submission_id"], spec, target)
        self._job = handle
        if "log_offset" in event:
            handle.log_offset = int(event["log_offset"])
            if save_log_offset(context, handle.submission_id, handle.log_offset):
                try:  # the trigger's record (on this host): the state store holds it now
                    forget_log_offset(handle.submission_id)
                except OSError:
                    pass
        if event["status"] == STOPPED and self._stopped_by_a_kill(handle):
            return self._execute_as_job(spec, context)
        return self._collect(handle, event["status"])

    def _collect(self, handle: JobHandle, status: str | None = None) -> dict[str, Any] | None:
        handle.raise_for_status(status)
        stage = handle.spec.artifact_stage_location
        conn_id = self.snowflake_conn_id if is_snowflake_stage(stage) else None
        with optional_session(conn_id) as session:
            artifact = handle.result(session=session, storage_options=self.storage_options)
        return self._returned(artifact)

    def _job_log(self, line: str) -> None:
        self.log.info("[ray job] %s", line)

    def _returned(self, artifact: Any) -> dict[str, Any] | None:
        self._published = artifact  # for get_openlineage_facets_on_complete
        if artifact is None:
            self.log.warning("train_func saved no model under get_model_dir(): nothing published")
            return None
        self.log.info("model published to %s with metrics %s", artifact.uri, artifact.metrics)
        return artifact.to_dict()

    def on_kill(self) -> None:
        """The task is being killed (marked failed, cleared, timed out): stop the Ray job so
        it publishes nothing (waiting at most ``KILL_STOP_WAIT_S`` for it to end), or tear
        down this process's workers."""
        self._killed = True
        job = self._job
        if job is not None:
            self.log.info(
                "on_kill: stopping Ray job %s (request %s)", job.submission_id, job.spec.request_id
            )
            status = job.stop(wait_s=KILL_STOP_WAIT_S)
            if status in TERMINAL:
                self.log.info("on_kill: Ray job %s ended %s", job.submission_id, status)
            else:
                self.log.warning(
                    "on_kill: Ray job %s still %s %.0f s after its stop was requested",
                    job.submission_id,
                    status,
                    KILL_STOP_WAIT_S,
                )
        else:
            self.log.info("on_kill: stopping this process's Ray workers")
        shutdown_workers()

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (called by the optional OpenLineage provider only): the training and
        eval data in, the published model out; on failure, where it was to go."""
        from shardtrain_airflow.lineage import for_training

        return for_training(self, task_instance)


class BoostingTrainOperator(TrainOperator):
    """The XGBoost and LightGBM operators: data as table / query / path (and ``eval_``
    twins), feature and label columns, booster parameters."""

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
    default_objective: str = ""

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
        objective: str | None = None,
        verbose_eval: int | None = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.input_cols, self.label_col = input_cols, label_col
        self.table, self.query, self.path = table, query, path
        self.eval_table, self.eval_query, self.eval_path = eval_table, eval_query, eval_path
        # Not `params`: that name is Airflow's own (DAG params, `{{ params.x }}`).
        self.training_params = training_params or {}
        self.n_estimators = n_estimators
        self.objective = objective or self.default_objective
        self.verbose_eval = verbose_eval

    def spec_fields(self) -> dict[str, Any]:
        train = {"table": self.table, "query": self.query, "path": self.path}
        if not any(train.values()):
            raise ConfigError(
                f"task {self.task_id!r} has no training data: give table=, query= or path=."
            )
        return dict(
            train_data=train,
            eval_data={"table": self.eval_table, "query": self.eval_query, "path": self.eval_path},
            input_cols=self.input_cols,
            label_col=self.label_col,
            n_estimators=self.n_estimators,
            objective=self.objective,
            params=self.training_params,
            verbose_eval=self.verbose_eval,
        )


class XGBoostTrainOperator(BoostingTrainOperator):
    """Train ``XGBEstimator`` on Ray; the XCom is the published model's artifact.

    Example:
        >>> train = XGBoostTrainOperator(                                 # doctest: +SKIP
        ...     task_id="train", table="TRAINING_DATA", snowflake_conn_id="snowflake_default",
        ...     input_cols=["AGE", "INCOME"], label_col="DEFAULT_RISK",
        ...     training_params={"max_depth": 6}, artifact_stage_location="@ML.PUBLIC.MODELS")
    """

    framework = "xgboost"
    default_objective = "reg:squarederror"
    ui_color = "#e8f4fd"


class LightGBMTrainOperator(BoostingTrainOperator):
    """Train ``LightGBMEstimator`` on Ray; the XCom is the published model's artifact."""

    framework = "lightgbm"
    default_objective = "regression"
    ui_color = "#e8f4fd"


class PyTorchTrainOperator(TrainOperator):
    """Run ``PyTorchDistributor`` on Ray; the XCom is the published model's artifact.

    ``train_func`` is a callable or an importable dotted path; ``dataset_map`` maps names to
    ``{'table': ...}``, ``{'query': ...}`` or ``{'path': ...}``; ``scaling_config`` is
    ``{'num_nodes', 'num_workers_per_node', 'resource_requirements_per_worker': {'num_cpus',
    'num_gpus'}}``.
    """

    framework = "pytorch"
    template_fields: Sequence[str] = ("dataset_map", "hyper_params", "artifact_stage_location")
    template_fields_renderers = {"dataset_map": "json", "hyper_params": "json"}
    ui_color = "#fdeee8"

    def __init__(
        self,
        *,
        train_func: Callable | str,
        dataset_map: dict[str, dict[str, Any]] | None = None,
        hyper_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.train_func = train_func
        self.dataset_map = dataset_map or {}
        self.hyper_params = hyper_params or {}

    def spec_fields(self) -> dict[str, Any]:
        if not isinstance(self.train_func, str) and not callable(self.train_func):
            raise ConfigError(
                f"task {self.task_id!r}: train_func must be a callable or an importable dotted "
                f"path, got {type(self.train_func).__name__}."
            )
        return dict(
            train_func=self.train_func if isinstance(self.train_func, str) else None,
            dataset_map=self.dataset_map,
            hyper_params=self.hyper_params,
        )

    def train_callable(self) -> Callable | None:
        return None if isinstance(self.train_func, str) else self.train_func
