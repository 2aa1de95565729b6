"""What the gradient-boosting estimators (XGBoost, LightGBM) share: the fit on the run engine
(checks, shards, rounds, metric history, checkpoints, publishing), results, and distributed
prediction. Each framework adds how to resolve its parameters and launch its ranks; its
model format comes from its spec in ``shardtrain.model.frameworks``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from shardtrain import env
from shardtrain.config import FailureConfig, GBDTScalingConfig, check_int
from shardtrain.data.data_connector import DataConnector, as_connector
from shardtrain.data.numeric import TRAIN_BATCH_ROWS, check_training_columns, matrix_batches
from shardtrain.data.sharding import shard
from shardtrain.errors import ConfigError, NotFittedError, ScalingConfigError, SchemaError
from shardtrain.model.artifact import ModelArtifact, check_request_id
from shardtrain.model.frameworks import FrameworkSpec
from shardtrain.modeling.params import warn_unknown_params
from shardtrain.runtime import worker_group
from shardtrain.runtime.cluster import connect
from shardtrain.runtime.events import RoundMetrics, Snapshot
from shardtrain.runtime.memory import MemoryPlan, gib, plan_memory, resolve_budget
from shardtrain.runtime.resources import WorkerShape
from shardtrain.runtime.run import Checkpoint, Run, RunPlan, emit

#: Metric history: ``{'train': {'rmse': [per round]}, 'eval': {...}}``.
History = dict[str, dict[str, list[float]]]


@dataclass(frozen=True)
class BoostingPlan:
    """A fit's resolved settings: booster params, rounds, early stopping, worker shape."""

    params: dict[str, Any]
    rounds: int
    early_stopping_rounds: int | None
    shape: WorkerShape


@dataclass(frozen=True)
class BoostingJob:
    """What every rank of one attempt trains (pickled to each rank with its shards)."""

    params: dict[str, Any]
    num_boost_round: int
    early_stopping_rounds: int | None
    input_cols: list[str]
    label_col: str | None
    init_model: bytes | None
    checkpoint_every: int
    label_rule: tuple[str, int] = ("any", 0)  # what the objective takes (data.numeric)
    #: Whether ranks evaluate the training set each round (see ``wants_train_metric``).
    evaluate_train: bool = True
    #: Whether ranks train from external memory (the budget check decided: ``MemoryPlan``).
    external_memory: bool = False
    #: Where external-memory caches go (``SHARDTRAIN_EXTMEM_DIR`` read on the driver; None:
    #: each worker's own default).
    extmem_dir: str | None = None


@dataclass(frozen=True)
class BoostingRankResult:
    """One rank's outcome; rank 0's carries the model bytes."""

    rows: int
    best_iteration: int | None
    data_seconds: float
    training_seconds: float
    model: bytes | None = None
    #: External memory: the rank's cache folder (removed by the time this is read) and its
    #: size on disk once the matrices were built.
    cache_dir: str | None = None
    cache_bytes: int = 0
    #: The rank's eval-set rows (``rows`` are its training rows).
    eval_rows: int = 0


#: Per-row state of a boosting rank beside its data (gradient pairs, predictions, labels,
#: row partition indices), rounded up.
PER_ROW_STATE_BYTES = 48

#: Float32 bytes of one prediction batch (features): what a predicting rank holds at a time,
#: with the framework's copy of it and the batch's predictions.
PREDICT_BATCH_BYTES = 32 * 2**20

#: Streaming (LightGBM; here for the same reason): the bytes of features in one batch a rank
#: converts and hands LightGBM.
STREAM_BATCH_BYTES = 4 * 2**20


#: Thread counts follow the workers' CPUs: not part of what a checkpoint is of.
_THREAD_KEYS = ("nthread", "num_threads", "n_jobs")


def truncate_history(history: History, rounds: int) -> History:
    return {s: {m: v[:rounds] for m, v in ms.items()} for s, ms in history.items()}


def append_history(history: History, event: RoundMetrics) -> None:
    for set_name, metrics in event.metrics.items():
        for metric, value in metrics.items():
            history.setdefault(set_name, {}).setdefault(metric, []).append(value)


def final_metrics(history: History) -> dict[str, dict[str, float]]:
    return {s: {m: float(v[-1]) for m, v in ms.items() if v} for s, ms in history.items()}


def wants_train_metric(
    params: dict[str, Any],
    metric_keys: Sequence[str],
    *,
    has_eval_set: bool,
    verbose_every: int,
    early_stopping_rounds: int | None,
) -> bool:
    """Whether a fit evaluates its training set every round: only when someone reads it.

    That is an eval set (the history has ``train`` beside ``eval``, as the vendor examples
    watch both), a metric named in ``params`` (``metric_keys``), ``verbose_eval`` (the logged
    lines), or early stopping without an eval set (it then watches the training set, as the
    vendor's ``train`` does with what it is given). Otherwise the ranks skip it: at 1M rows it
    was ~8% of the boosting time, and, for LightGBM, one network round-trip per round.
    """
    return bool(
        has_eval_set
        or verbose_every
        or early_stopping_rounds
        or any(str(params.get(key) or "").lower() not in ("", "none", "[]") for key in metric_keys)
    )


def describe_rank_times(results: Sequence[BoostingRankResult]) -> str:
    """The ``time per rank`` log line. It names the rows it counts, training + eval, as the
    memory-budget line does (``MemoryPlan.describe``): the same shard reads the same there."""
    return "time per rank: " + ", ".join(
        f"rank {r}: {res.rows} training + {res.eval_rows} eval rows, data "
        f"{res.data_seconds:.2f} s, training {res.training_seconds:.2f} s"
        for r, res in enumerate(results)
    )


def check_callbacks(callbacks, kind: str) -> list:
    """``callbacks`` as a list, refused on the driver when no rank could run them: not a list
    (a single callback: wrap it in one), an item that is not a callback (``kind`` says what
    one is). Whether they pickle is checked by ``fit`` (``check_picklable``)."""
    if callbacks is None:
        return []
    if callable(callbacks) or not isinstance(callbacks, list | tuple):
        raise ConfigError(
            f"callbacks must be a list of {kind}, got {type(callbacks).__name__}; wrap a "
            "single callback in a list.",
            field="callbacks",
        )
    for i, callback in enumerate(callbacks):
        if not callable(callback) and not hasattr(callback, "after_iteration"):
            raise ConfigError(
                f"callbacks[{i}] is a {type(callback).__name__}, not a callback: pass {kind}.",
                field="callbacks",
            )
    return list(callbacks)


def check_picklable(callbacks: list) -> None:
    """Callbacks travel to every rank pickled (cloudpickle): one that cannot (it holds a lock,
    a socket, an open file) is refused before any worker starts."""
    from ray import cloudpickle

    for i, callback in enumerate(callbacks):
        try:
            cloudpickle.dumps(callback)
        except Exception as exc:
            raise ConfigError(
                f"callbacks[{i}] ({type(callback).__name__}) cannot be sent to the workers: "
                f"{type(exc).__name__}: {exc}. Callbacks run on every rank, so they must pickle; "
                "create locks, connections or files inside the callback instead.",
                field="callbacks",
            ) from None


def check_thread_params(params: dict, keys: Sequence[str], cpus: float) -> None:
    """Refuse thread counts above what each worker was given; drop them (we set our own)."""
    for key in keys:
        asked = params.pop(key, None)
        if asked is not None and asked > cpus:
            raise ScalingConfigError(
                f"params[{key!r}]={asked} exceeds the {cpus:g} CPUs each worker has; "
                "raise num_cpu_per_worker or drop the parameter.",
                field=key,
            )


def pop_rounds(params: dict, default: int, aliases: Sequence[str]) -> int:
    """The number of rounds: the last alias present in ``params`` wins over ``default``."""
    rounds = default
    for alias in aliases:
        rounds = params.pop(alias, rounds)
    return check_int(rounds, "n_estimators")


def prediction_table(predictions: np.ndarray) -> pa.Table:
    """``prediction`` (one output) or ``prediction_<i>`` columns (one per output)."""
    if predictions.ndim == 1:
        return pa.table({"prediction": predictions})
    return pa.table({f"prediction_{i}": predictions[:, i] for i in range(predictions.shape[1])})


def predict_rank(
    reporter,
    *,
    predictor,
    model: bytes,
    shard: DataConnector,
    input_cols: list[str],
    output: str | None,
    rank: int,
    storage_options: dict | None,
):
    """One rank's predictions: in memory, or written as ``part-<rank>.parquet`` under output.

    With ``output`` the rank streams: each batch's predictions are written as a row group as
    soon as they are made, so a rank holds one batch (features and predictions) at a time
    whatever the size of its shard (issue 18); only in-memory predictions are concatenated.
    """
    predict_batch = predictor(model)
    # batches of <= PREDICT_BATCH_BYTES of float32 features: wide rows, fewer of them
    batch_rows = max(
        1024, min(TRAIN_BATCH_ROWS, PREDICT_BATCH_BYTES // (4 * max(len(input_cols), 1)))
    )
    batches = (
        predict_batch(features)
        for features, _ in matrix_batches(shard, input_cols, None, batch_rows)
    )
    if output is None:
        parts = list(batches)
        return np.concatenate(parts) if parts else np.empty((0,), dtype=np.float32)
    fs, root = url_to_fs(output, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    rows, writer = 0, None
    with fs.open(f"{root.rstrip('/')}/part-{rank:05d}.parquet", "wb") as handle:
        try:
            for predictions in batches:
                table = prediction_table(predictions)
                if writer is None:
                    writer = pq.ParquetWriter(handle, table.schema)
                writer.write_table(table)
                rows += len(predictions)
            if writer is None:  # an empty shard still writes its (empty) part
                pq.write_table(prediction_table(np.empty((0,), dtype=np.float32)), handle)
        finally:
            if writer is not None:
                writer.close()
    return rows


class BoostingEstimator:
    """What XGBEstimator and LightGBMEstimator share: the fit loop (checks, shards, restarts,
    checkpoints, progress, publishing), results and distributed predict.

    Subclasses set ``spec`` (their framework's spec) and implement ``_resolve`` (params,
    rounds, early stopping, worker shape) and ``_launch`` (run the ranks on a leased group).
    """

    spec: FrameworkSpec
    #: Characters the framework refuses in feature names (checked before training).
    forbidden_name_chars: str = ""
    #: Parameters that name an evaluation metric (asking for one: ``wants_train_metric``).
    metric_keys: tuple[str, ...] = ()
    #: Whether a shard over the memory budget can train streamed (external memory); if not,
    #: it is refused before workers start (``runtime.memory.plan_memory``).
    can_stream: bool = False

    def __init__(
        self,
        n_estimators: int,
        objective: str,
        params: dict[str, Any] | None,
        scaling_config: GBDTScalingConfig,
        failure_config: FailureConfig | None,
    ) -> None:
        self.n_estimators = n_estimators
        self.objective = objective
        self.params = dict(params or {})
        self.scaling_config = scaling_config
        self.failure_config = failure_config or FailureConfig()
        self._booster = None
        self._eval_results: History = {}
        self._artifact: ModelArtifact | None = None
        self._input_cols: list[str] | None = None
        self._memory_plan: MemoryPlan | None = None
        #: Run on every rank (``_launch`` sends them); checked in ``__init__`` and ``fit``.
        self.callbacks: list = []

    @property
    def framework(self) -> str:
        return self.spec.name

    @property
    def model_file(self) -> str:
        return self.spec.model_file

    # -- results ------------------------------------------------------------------------------
    def get_booster(self):
        """The trained booster (also returned by ``fit``)."""
        return self._need(self._booster, "booster")

    def get_eval_results(self) -> History:
        """Global metrics per round: ``{'train': {'rmse': [...]}, 'eval': {...}}``."""
        return self._eval_results

    def get_artifact(self) -> ModelArtifact:
        """Where ``fit`` published the model, and what it is."""
        return self._need(self._artifact, "published model")

    def get_memory_plan(self) -> MemoryPlan:
        """What the last fit's memory check decided: budget, each rank's need, and whether
        the ranks trained from external memory."""
        return self._need(self._memory_plan, "memory plan")

    @staticmethod
    def _need(value, what):
        if value is None:
            raise NotFittedError(f"fit() has not run yet: there is no {what}.")
        return value

    # -- fit ----------------------------------------------------------------------------------
    def fit(
        self,
        dataset,
        input_cols,
        label_col,
        eval_set=None,
        verbose_eval=None,
        *,
        artifact_stage_location: str | None = None,
        request_id: str | None = None,
        session: Any = None,
        storage_options: dict | None = None,
    ):
        """Train across the Ray cluster, publish the model, and return the booster.

        Args:
            dataset, eval_set: a DataConnector / ShardedDataConnector, pandas or Arrow table,
                Snowpark DataFrame or Parquet path. A ``ShardedDataConnector(equal=True)``
                gives every worker the same number of rows.
            input_cols, label_col: feature columns and the label column (numeric).
            verbose_eval: log global metrics every N rounds (True: every round). The
                training set is evaluated each round only when something reads it: an
                eval set, ``verbose_eval``, a metric named in ``params``, or early
                stopping; otherwise ``get_eval_results()`` is empty.
            artifact_stage_location: where to publish (default: the embedded local stage).
            request_id: the published folder's name; a run retried with the same id resumes
                from its checkpoints and republishes to the same location.
            session, storage_options: how to reach a Snowflake or fsspec stage.
        """
        self.spec.require()  # on the driver, before any worker starts
        if request_id is not None:
            check_request_id(request_id)
        input_cols = self._check_names(input_cols, label_col)
        train = as_connector(dataset, "training")
        input_types = check_training_columns(train, input_cols, label_col, "training")
        evals = None
        if eval_set is not None:
            evals = as_connector(eval_set, "eval_set")
            check_training_columns(evals, input_cols, label_col, "eval_set")
        self._check_callbacks()
        connect()
        plan = self._resolve()
        warn_unknown_params(self.framework, plan.params)  # typos named on the driver
        workers = plan.shape.num_workers
        train_shards = shard(train, workers, "training")
        eval_shards = shard(evals, workers, "eval_set") if evals is not None else [None] * workers
        memory_plan = self._plan_memory(train_shards, eval_shards, len(input_cols), workers)
        emit(memory_plan.describe())
        run = Run(
            RunPlan.open(
                artifact_stage_location,
                request_id,
                session=session,
                storage_options=storage_options,
                checkpoint_every=self.failure_config.checkpoint_frequency,
                checkpoint_name=self.spec.model_file,
                identity={
                    "framework": self.spec.name,
                    "params": {k: v for k, v in plan.params.items() if k not in _THREAD_KEYS},
                    "rounds": plan.rounds,
                    "early_stopping_rounds": plan.early_stopping_rounds,
                    "input_cols": list(input_cols),
                    "label_col": label_col,
                    "train": train.describe(),
                    "eval": evals.describe() if evals is not None else None,
                },
            ),
            self.failure_config,
            unit="round",
        )
        history: History = {}
        every = 1 if verbose_eval is True else (verbose_eval or 0)
        evaluate_train = wants_train_metric(
            plan.params,
            self.metric_keys,
            has_eval_set=evals is not None,
            verbose_every=every,
            early_stopping_rounds=plan.early_stopping_rounds,
        )

        def one_try(start: Checkpoint) -> list[BoostingRankResult] | bytes:
            history.clear()
            history.update(truncate_history(start.history, start.step))
            if start.data is not None and start.step >= plan.rounds:
                # The driver stopped after the last checkpoint, before publishing.
                emit(f"the checkpoint is at the last round ({start.step}): publishing it as is")
                return start.data
            job = BoostingJob(
                params=plan.params,
                num_boost_round=plan.rounds - start.step,
                early_stopping_rounds=plan.early_stopping_rounds,
                input_cols=list(input_cols),
                label_col=label_col,
                init_model=start.data,
                checkpoint_every=self.failure_config.checkpoint_frequency,
                label_rule=self._label_rule(plan.params),
                evaluate_train=evaluate_train,
                external_memory=memory_plan.external,
                extmem_dir=env.EXTMEM_DIR.get(),
            )

            def on_progress(events: list[RoundMetrics], snapshot: Snapshot | None) -> None:
                run.observe(events, plan.rounds, plan.early_stopping_rounds)
                for event in events:
                    append_history(history, event)
                    # a resumed run's first round is shown as a fresh run's first is
                    if every and (event.round % every == 0 or event.round == start.step + 1):
                        emit(event.format())
                if snapshot is not None:
                    snap = truncate_history(history, snapshot.step)
                    run.save(Checkpoint(snapshot.step, snapshot.data, snap))

            with (
                self._collective(plan.shape.num_workers) as collective,
                worker_group.lease(plan.shape, request_id=run.plan.request_id) as group,
            ):
                return self._launch(
                    group, job, train_shards, eval_shards, on_progress, start.step, collective
                )

        results = run.execute(lambda start: self._retrying(lambda: one_try(start)))
        if isinstance(results, bytes):
            model_bytes = results
        else:
            emit(describe_rank_times(results))
            model_bytes = results[0].model
            if memory_plan.external:
                memory_plan = replace(
                    memory_plan,
                    cache_dirs=tuple(res.cache_dir for res in results),
                    cache_bytes=tuple(res.cache_bytes for res in results),
                )
                emit(
                    "external memory: "
                    + ", ".join(
                        f"rank {r}: {gib(res.cache_bytes)} of cache pages (removed)"
                        for r, res in enumerate(results)
                    )
                )
        assert self.spec.load is not None  # the boosting frameworks move models as bytes
        self._booster = self._with_params(self.spec.load(model_bytes), plan)
        self._eval_results = history
        self._memory_plan = memory_plan
        self._input_cols = list(input_cols)
        num_rows = {"train": train.num_rows}
        if evals is not None:
            num_rows["eval"] = evals.num_rows
        source = {"train": train.describe()}
        if evals is not None:
            source["eval"] = evals.describe()
        self._artifact = run.plan.publish(
            self.spec.name,
            lambda folder: (folder / self.spec.model_file).write_bytes(model_bytes),
            metrics=final_metrics(history),
            params={
                **plan.params,
                "n_estimators": plan.rounds,
                "early_stopping_rounds": plan.early_stopping_rounds,
            },
            input_cols=list(input_cols),
            input_types=input_types,
            label_col=label_col,
            num_rows=num_rows,
            source=source,
        )
        return self._booster

    # -- memory budget (issue 18) --------------------------------------------------------------
    def _plan_memory(self, train_shards, eval_shards, num_features: int, workers: int):
        """Check each rank's shard (training + eval rows) against the budget, before any
        worker starts: ``MemoryBudgetError`` for one that fits neither in memory nor streamed."""
        budget, source = resolve_budget(
            getattr(self.scaling_config, "memory_per_worker", -1), workers
        )
        rows = [
            t.num_rows + (e.num_rows if e is not None else 0)
            for t, e in zip(train_shards, eval_shards, strict=True)
        ]
        return plan_memory(
            budget,
            source,
            rows,
            num_features,
            self._shard_memory_bytes,
            self.can_stream,
            self.spec.name,
        )

    def _shard_memory_bytes(self, rows: int, num_features: int, streaming: bool) -> int:
        """Bytes a rank needs for a shard of ``rows`` x ``num_features``: what grows with the
        shard (the worker's fixed overhead, Python and the framework, ~150-250 MiB, comes on
        top; the automatic budget leaves room for it).

        In memory (the default, for any framework): the float32 copy of features and label,
        the trainer's binned matrix (one byte a value, up to 256 bins, plus a row offset) and
        per-row state (gradients, hessians, predictions, row partitions: ``PER_ROW_STATE_BYTES``).
        A framework that can stream (``can_stream``) overrides this for ``streaming=True``
        with what stays resident then.
        """
        return rows * (4 * (num_features + 1) + num_features + 8 + PER_ROW_STATE_BYTES)

    def _user_params(self, plan: BoostingPlan) -> dict[str, Any]:
        """The fit's params as the user's own training call would have them: the thread
        counts shardtrain set for its workers give way to the user's (or none)."""
        params = {k: v for k, v in plan.params.items() if k not in _THREAD_KEYS}
        params.update({k: v for k, v in self.params.items() if k in _THREAD_KEYS})
        return params

    def _with_params(self, booster, plan: BoostingPlan):
        """The booster loaded from the model bytes, given back the training configuration
        the bytes do not keep (as the framework's own ``train`` returns it)."""
        return booster

    def _check_callbacks(self) -> None:
        """The callbacks, checked on the driver before any worker starts (the framework is
        imported by then)."""
        check_picklable(self.callbacks)

    def _label_rule(self, params: dict[str, Any]) -> tuple[str, int]:
        """What the objective takes as labels (see ``data.numeric.check_labels``)."""
        return ("any", 0)

    def _check_names(self, input_cols, label_col) -> list[str]:
        """Column arguments the workers would refuse, refused here before anything starts."""
        try:
            names = None if isinstance(input_cols, str) else list(input_cols)
        except TypeError:
            names = None
        if names is None or not all(isinstance(c, str) for c in names):
            raise ConfigError(
                f"input_cols must be a list of column names, got {input_cols!r}.",
                field="input_cols",
            )
        if not isinstance(label_col, str) or not label_col:
            raise ConfigError(
                f"label_col must name the label column, got {label_col!r}.", field="label_col"
            )
        for column in names:
            bad = sorted({c for c in column if c in self.forbidden_name_chars})
            if bad or not column:
                raise SchemaError(
                    f"{self.spec.name} cannot use the feature name {column!r}: it refuses names "
                    f"containing any of {' '.join(self.forbidden_name_chars)} (found "
                    f"{' '.join(bad) or 'an empty name'}). Rename the column.",
                    column=column,
                )
        return names

    def _retrying(self, attempt):
        """Run one attempt; a framework may retry failures of its own set-up here."""
        return attempt()

    # -- predict ------------------------------------------------------------------------------
    def predict(
        self,
        dataset,
        *,
        input_cols: list[str] | None = None,
        output: str | None = None,
        storage_options: dict | None = None,
    ):
        """Predict across the workers, each on its own shard.

        Returns the predictions in the dataset's row order (numpy), or, with ``output`` (a
        folder path or fsspec URL), writes ``part-<rank>.parquet`` files there and returns it.
        Every row is predicted, whatever the connector's ``equal`` setting.
        """
        assert self.spec.dump is not None  # the boosting frameworks move models as bytes
        model = self.spec.dump(self.get_booster())
        input_cols = list(input_cols or self._input_cols or [])
        data = as_connector(dataset, "prediction")
        check_training_columns(data, input_cols, None, "prediction")
        connect()
        shape = self._resolve().shape
        shape = replace(shape, num_workers=min(shape.num_workers, data.num_rows))
        shards = shard(data, shape.num_workers, "prediction", equal=False)
        with worker_group.lease(shape) as group:
            results = group.run(
                predict_rank,
                [
                    dict(
                        predictor=self.spec.predictor,
                        model=model,
                        shard=shards[rank],
                        input_cols=input_cols,
                        output=output,
                        rank=rank,
                        storage_options=storage_options,
                    )
                    for rank in range(shape.num_workers)
                ],
            )
        if output is not None:
            return output
        return np.concatenate(results)

    # -- per framework ------------------------------------------------------------------------
    def _resolve(self) -> BoostingPlan:
        raise NotImplementedError

    @contextmanager
    def _collective(self, world_size: int) -> Iterator[Any]:
        """What the ranks of one attempt connect through, set up before the group is leased
        so that its start overlaps the lease (XGBoost: its tracker); ``_launch`` gets it."""
        yield None

    def _launch(self, group, job, train_shards, eval_shards, on_progress, done, collective=None):
        raise NotImplementedError
