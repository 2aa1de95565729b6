"""What the XGBoost and LightGBM estimators share: input checks, shards, Arrow-to-numpy
batches, checkpoints, progress logging, publishing and distributed prediction."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from shardtrain.artifact import ModelArtifact, new_request_id
from shardtrain.data.data_connector import DataConnector
from shardtrain.data.sharded_data_connector import plan_shards
from shardtrain.data.sources import check_unique_columns
from shardtrain.errors import ConfigError, EmptyDataError, SchemaError, missing_columns_error
from shardtrain.stage import open_stage
from shardtrain.stage.base import Stage
from shardtrain.stage.publish import publish_model

logger = logging.getLogger("shardtrain")

#: Rows per batch fed to XGBoost's DataIter / LightGBM's Dataset construction.
TRAIN_BATCH_ROWS = 262_144


def emit(message: str) -> None:
    """Progress for people: through logging when the app configured it, else printed
    (as xgboost's own ``verbose_eval`` does)."""
    if logging.getLogger().handlers or logger.handlers:
        logger.info(message)
    else:
        print(message, flush=True)


def as_connector(data: Any, name: str) -> DataConnector:
    """A DataConnector for anything ``fit``/``predict`` accept."""
    if isinstance(data, DataConnector):
        return data
    if data is None:
        raise ConfigError(
            f"{name} is required: give a DataConnector, a pandas or Arrow table, "
            "a Snowpark DataFrame or a Parquet path."
        )
    return DataConnector.from_dataframe(data)


def _is_numeric(kind: pa.DataType) -> bool:
    return (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_decimal(kind)
    )


def check_training_columns(
    connector: DataConnector, input_cols: Sequence[str], label_col: str | None, name: str
) -> dict[str, str]:
    """Refuse bad column choices before any worker starts; returns {column: Arrow type}."""
    if isinstance(input_cols, str) or not input_cols:
        raise SchemaError(
            f"input_cols must be a non-empty list of column names, got {input_cols!r}.",
            column=None,
            available=connector.columns,
        )
    input_cols = list(input_cols)
    check_unique_columns(input_cols)
    wanted = input_cols + ([label_col] if label_col is not None else [])
    missing = [c for c in wanted if c not in connector.columns]
    if missing:
        raise missing_columns_error(missing, connector.columns)
    if label_col is not None and label_col in input_cols:
        raise SchemaError(
            f"the label column {label_col!r} is also in input_cols; a model "
            "cannot learn from its own label. Remove it from input_cols.",
            column=label_col,
            available=connector.columns,
        )
    for column in wanted:
        kind = connector.schema.field(column).type
        if not _is_numeric(kind):
            raise SchemaError(
                f"column {column!r} of the {name} data has type {kind}; the trainers take "
                "numeric columns only (encode categories and cast decimals first).",
                column=column,
                available=connector.columns,
            )
    if connector.num_rows == 0:
        raise EmptyDataError(f"the {name} data has no rows.", num_rows=0)
    return {c: str(connector.schema.field(c).type) for c in input_cols}


def shard(connector: DataConnector, world_size: int, name: str) -> list[DataConnector]:
    """One contiguous, non-empty part per worker."""
    windows = plan_shards(connector.num_rows, world_size, equal=False)
    if connector.num_rows < world_size:
        raise EmptyDataError(
            f"the {name} data has {connector.num_rows} rows, fewer than the {world_size} "
            "workers: a worker would get an empty shard. Use fewer workers or more data.",
            num_rows=connector.num_rows,
            world_size=world_size,
        )
    return [connector._part(a, b) for a, b in windows]


def matrix_batches(
    connector: DataConnector,
    input_cols: list[str],
    label_col: str | None,
    batch_rows: int = TRAIN_BATCH_ROWS,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(features float32 [n, k], label float32 [n]) per batch, straight from Arrow."""
    columns = input_cols + ([label_col] if label_col is not None else [])
    for batch in connector.iter_batches(batch_rows, columns=columns):
        features = np.empty((batch.num_rows, len(input_cols)), dtype=np.float32)
        for j, column in enumerate(input_cols):
            features[:, j] = _to_numpy(batch.column(column))
        label = None
        if label_col is not None:
            array = batch.column(label_col)
            if array.null_count:
                raise SchemaError(
                    f"the label column {label_col!r} has {array.null_count} null value(s) in "
                    "this shard; drop or fill those rows before training.",
                    column=label_col,
                    available=connector.columns,
                )
            label = _to_numpy(array).astype(np.float32, copy=False)
        yield features, label


def _to_numpy(array: pa.Array) -> np.ndarray:
    if pa.types.is_decimal(array.type) or pa.types.is_boolean(array.type):
        array = array.cast(pa.float64())
    return array.to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class GBDTScalingConfig:
    """Workers, CPUs per worker and GPUs: -1 is automatic, ``use_gpu=None`` detects."""

    num_workers: int = -1
    num_cpu_per_worker: int = -1
    use_gpu: bool | None = None

    def __post_init__(self) -> None:
        from shardtrain.errors import ScalingConfigError

        for name in ("num_workers", "num_cpu_per_worker"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != -1):
                raise ScalingConfigError(
                    f"{name} must be a positive integer or -1 (automatic), got {value!r}.",
                    field=name,
                )
        if self.use_gpu not in (None, True, False):
            raise ScalingConfigError(
                f"use_gpu must be True, False or None, got {self.use_gpu!r}.", field="use_gpu"
            )


# -- checkpoints ----------------------------------------------------------------------------------


class CheckpointStore:
    """The latest checkpoint of a run, on the run's stage: ``checkpoints/<request_id>/``.

    The model bytes go first and ``state.json`` (round reached, metric history) last, so a
    reader never pairs a state with the wrong model.
    """

    def __init__(self, stage: Stage, request_id: str, model_name: str) -> None:
        self.stage = stage
        self.base = f"checkpoints/{request_id}"
        self.model_name = model_name

    def load(self) -> tuple[int, bytes | None, dict]:
        if not self.stage.exists(f"{self.base}/state.json"):
            return 0, None, {}
        state = json.loads(self.stage.read_bytes(f"{self.base}/state.json"))
        data = self.stage.read_bytes(f"{self.base}/{state['file']}")
        return int(state["step"]), data, state.get("history", {})

    def save(self, step: int, data: bytes, history: dict) -> None:
        name = f"{step:08d}-{self.model_name}"
        self.stage.write_bytes(f"{self.base}/{name}", data)
        self.stage.write_bytes(
            f"{self.base}/state.json",
            json.dumps({"step": step, "file": name, "history": history}).encode(),
        )

    def clear(self) -> None:
        self.stage.delete(self.base)


def truncate_history(history: dict, rounds: int) -> dict:
    return {s: {m: v[:rounds] for m, v in ms.items()} for s, ms in history.items()}


def append_history(history: dict, event: dict) -> None:
    for set_name, metrics in event["metrics"].items():
        for metric, value in metrics.items():
            history.setdefault(set_name, {}).setdefault(metric, []).append(value)


def format_round(event: dict) -> str:
    parts = [f"{s}-{m}:{v:.6g}" for s, ms in event["metrics"].items() for m, v in ms.items()]
    return f"[{event['round']}]\t" + "\t".join(parts)


@dataclass
class RunPlan:
    """Where a fit publishes and checkpoints."""

    stage: Stage
    request_id: str
    checkpoints: CheckpointStore | None


def plan_run(
    artifact_stage_location, request_id, session, storage_options, checkpoint_every, model_name
) -> RunPlan:
    stage = open_stage(artifact_stage_location, session=session, storage_options=storage_options)
    request_id = request_id or new_request_id()
    store = CheckpointStore(stage, request_id, model_name) if checkpoint_every else None
    return RunPlan(stage, request_id, store)


def publish(
    plan: RunPlan,
    framework: str,
    model_name: str,
    write_model: Callable[[Path], None],
    **metadata: Any,
) -> ModelArtifact:
    with tempfile.TemporaryDirectory(prefix="shardtrain-publish-") as tmp:
        write_model(Path(tmp) / model_name)
        artifact = publish_model(
            tmp,
            framework=framework,
            stage=plan.stage,
            request_id=plan.request_id,
            model_file=model_name,
            **metadata,
        )
    if plan.checkpoints is not None:
        plan.checkpoints.clear()
    return artifact


def final_metrics(history: dict) -> dict[str, dict[str, float]]:
    return {s: {m: float(v[-1]) for m, v in ms.items() if v} for s, ms in history.items()}


def source_of(train: DataConnector, evals: DataConnector | None) -> dict[str, Any]:
    source = {"train": train.describe()}
    if evals is not None:
        source["eval"] = evals.describe()
    return source


# -- distributed prediction ------------------------------------------------------------------------


def predict_rank(
    reporter,
    *,
    predictor: Callable,
    model: bytes,
    shard: DataConnector,
    input_cols: list[str],
    output: str | None,
    rank: int,
    storage_options: dict | None,
):
    """One rank's predictions: in memory, or written as ``part-<rank>.parquet`` under output."""
    predict_batch = predictor(model)
    parts = [predict_batch(features) for features, _ in matrix_batches(shard, input_cols, None)]
    predictions = np.concatenate(parts) if parts else np.empty((0,), dtype=np.float32)
    if output is None:
        return predictions
    import pyarrow.parquet as pq
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(output, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    if predictions.ndim == 1:
        table = pa.table({"prediction": predictions})
    else:
        table = pa.table(
            {f"prediction_{i}": predictions[:, i] for i in range(predictions.shape[1])}
        )
    path = f"{root.rstrip('/')}/part-{rank:05d}.parquet"
    with fs.open(path, "wb") as handle:
        pq.write_table(table, handle)
    return len(predictions)


# -- the estimator skeleton -------------------------------------------------------------------------


class DistributedGBDT:
    """What XGBEstimator and LightGBMEstimator share: the fit loop (checks, shards, restarts,
    checkpoints, progress, publishing), results and distributed predict.

    Subclasses set ``framework`` and ``model_file`` and implement ``_resolve`` (params,
    rounds, early stopping, worker shape), ``_launch`` (run the ranks on a leased group),
    ``_load`` (model bytes -> booster), ``_dump`` (booster -> model bytes) and
    ``_predictor`` (a picklable factory: model bytes -> batch predict function).
    """

    framework: str
    model_file: str

    def __init__(self, n_estimators, objective, params, scaling_config, failure_config):
        from shardtrain.config import FailureConfig

        self.n_estimators = n_estimators
        self.objective = objective
        self.params = dict(params or {})
        self.scaling_config = scaling_config
        self.failure_config = failure_config or FailureConfig()
        self._booster = None
        self._eval_results: dict = {}
        self._artifact: ModelArtifact | None = None
        self._input_cols: list[str] | None = None
        self._latest: tuple[int, bytes | None, dict] = (0, None, {})

    # -- results ----------------------------------------------------------------------------
    def get_booster(self):
        """The trained booster (also returned by ``fit``)."""
        return self._need(self._booster, "booster")

    def get_eval_results(self) -> dict[str, dict[str, list[float]]]:
        """Global metrics per round: ``{'train': {'rmse': [...]}, 'eval': {...}}``."""
        return self._eval_results

    def get_artifact(self) -> ModelArtifact:
        """Where ``fit`` published the model, and what it is."""
        return self._need(self._artifact, "published model")

    @staticmethod
    def _need(value, what):
        if value is None:
            raise RuntimeError(f"fit() has not run yet: there is no {what}.")
        return value

    # -- fit ------------------------------------------------------------------------------------
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
                Snowpark DataFrame or Parquet path.
            input_cols, label_col: feature columns and the label column (numeric).
            verbose_eval: log global metrics every N rounds (True: every round).
            artifact_stage_location: where to publish (default: the embedded local stage).
            request_id: the published folder's name; a run retried with the same id resumes
                from its checkpoints and republishes to the same location.
            session, storage_options: how to reach a Snowflake or fsspec stage.
        """
        from shardtrain.runtime import worker_group
        from shardtrain.runtime.cluster import connect

        train = as_connector(dataset, "training")
        input_types = check_training_columns(train, input_cols, label_col, "training")
        evals = None
        if eval_set is not None:
            evals = as_connector(eval_set, "eval_set")
            check_training_columns(evals, input_cols, label_col, "eval_set")
        connect()
        params, rounds, early, shape = self._resolve()
        train_shards = shard(train, shape.num_workers, "training")
        eval_shards = (
            shard(evals, shape.num_workers, "eval_set")
            if evals is not None
            else [None] * shape.num_workers
        )
        plan = plan_run(
            artifact_stage_location,
            request_id,
            session,
            storage_options,
            self.failure_config.checkpoint_frequency,
            self.model_file,
        )
        done, model, history = plan.checkpoints.load() if plan.checkpoints else (0, None, {})
        if done:
            emit(f"resuming {plan.request_id} from its checkpoint at round {done}")
        state = {"done": done, "model": model, "history": history}

        def attempt():
            job = dict(
                params=params,
                num_boost_round=rounds - state["done"],
                early_stopping_rounds=early,
                input_cols=list(input_cols),
                label_col=label_col,
                init_model=state["model"],
                checkpoint_every=self.failure_config.checkpoint_frequency,
            )
            return self._attempt(
                shape,
                job,
                train_shards,
                eval_shards,
                state["history"],
                state["done"],
                plan,
                verbose_eval,
            )

        def on_restart(exc, failures):
            state["done"], state["model"], state["history"] = self._latest
            emit(
                f"{exc} Restarting the worker group ({failures}/"
                f"{self.failure_config.max_failures}) from round {state['done']}."
            )

        results = worker_group.with_restarts(attempt, self.failure_config.max_failures, on_restart)
        history = state["history"]
        emit(
            "time per rank: "
            + ", ".join(
                f"rank {r}: data {res['seconds']['data']:.2f} s, training "
                f"{res['seconds']['training']:.2f} s"
                for r, res in enumerate(results)
            )
        )
        model_bytes = results[0]["model"]
        self._booster = self._load(model_bytes)
        self._eval_results = history
        self._input_cols = list(input_cols)
        num_rows = {"train": train.num_rows}
        if evals is not None:
            num_rows["eval"] = evals.num_rows
        self._artifact = publish(
            plan,
            self.framework,
            self.model_file,
            lambda path: path.write_bytes(model_bytes),
            metrics=final_metrics(history),
            params={**params, "n_estimators": rounds, "early_stopping_rounds": early},
            input_cols=list(input_cols),
            input_types=input_types,
            label_col=label_col,
            num_rows=num_rows,
            source=source_of(train, evals),
        )
        return self._booster

    def _attempt(self, shape, job, train_shards, eval_shards, history, done, plan, verbose_eval):
        from shardtrain.runtime import worker_group

        history.update(truncate_history(history, done))
        self._latest = (done, job["init_model"], truncate_history(history, done))
        every = 1 if verbose_eval is True else (verbose_eval or 0)

        def on_progress(events, checkpoint):
            for event in events:
                append_history(history, event)
                if every and (event["round"] % every == 0 or event["round"] == 1):
                    emit(format_round(event))
            if checkpoint is not None:
                step, data = checkpoint
                snapshot = truncate_history(history, step)
                self._latest = (step, data, snapshot)
                if plan.checkpoints is not None:
                    plan.checkpoints.save(step, data, snapshot)

        with worker_group.lease(shape) as group:
            return self._launch(group, job, train_shards, eval_shards, on_progress, done)

    # -- predict ----------------------------------------------------------------------------------
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
        """
        from shardtrain.runtime import worker_group
        from shardtrain.runtime.cluster import connect

        model = self._dump(self.get_booster())
        input_cols = list(input_cols or self._input_cols or [])
        data = as_connector(dataset, "prediction")
        check_training_columns(data, input_cols, None, "prediction")
        connect()
        _, _, _, shape = self._resolve()
        shape = type(shape)(min(shape.num_workers, data.num_rows), shape.cpus, shape.gpus)
        shards = shard(data, shape.num_workers, "prediction")
        with worker_group.lease(shape) as group:
            results = group.run(
                predict_rank,
                [
                    dict(
                        predictor=self._predictor,
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

    # -- per framework ------------------------------------------------------------------------------
    def _resolve(self):
        raise NotImplementedError

    def _launch(self, group, job, train_shards, eval_shards, on_progress, done):
        raise NotImplementedError

    def _load(self, model: bytes):
        raise NotImplementedError

    def _dump(self, booster) -> bytes:
        raise NotImplementedError

    _predictor: Callable


def check_thread_params(params: dict, keys: Sequence[str], cpus: float) -> None:
    """Refuse thread counts above what each worker was given; drop them (we set our own)."""
    from shardtrain.errors import ScalingConfigError

    for key in keys:
        asked = params.pop(key, None)
        if asked is not None and asked > cpus:
            raise ScalingConfigError(
                f"params[{key!r}]={asked} exceeds the {cpus:g} CPUs each worker has; "
                "raise num_cpu_per_worker or drop the parameter.",
                field=key,
            )


def pop_rounds(params: dict, default: int, aliases: Sequence[str]) -> int:
    rounds = default
    for alias in aliases:
        rounds = params.pop(alias, rounds)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"n_estimators must be a positive integer, got {rounds!r}.")
    return rounds
