"""``Tuner``: the vendor's hyperparameter search, on Ray Tune.

``Tuner(train_func, search_space, TunerConfig(...)).run(dataset_map=...)`` checks the space,
the config and the cluster before any trial starts, runs the trials with Ray Tune (its
searchers, its trial scheduling; storage in a temporary folder removed afterwards; no console
tables), and returns ``TunerResults``: every trial as a DataFrame row, the best one, and the
best trial's model. That model is published to the stage like any trained model, with the
trial table (``trials.parquet``) beside it in the same manifest.

Resources: a trial reserves ``resource_per_trial`` (the vendor's dict, e.g. ``{"CPU": 2}``).
Without it a trial reserves no CPU and ``max_concurrent_trials`` (default: one per CPU) bounds
how many run at once: that is what a ``train_func`` running a shardtrain estimator needs, as
the estimator's own workers hold the CPUs (concurrent trials' fits queue for them); a CPU
held by the trial itself would be one the estimator could not use.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardtrain.config import check_int
from shardtrain.errors import (
    ConfigError,
    MetricNotReportedError,
    ScalingConfigError,
    TuneError,
)
from shardtrain.model.artifact import ModelArtifact, check_request_id
from shardtrain.modeling.tune.context import load_reported_model, run_trial
from shardtrain.modeling.tune.search import RandomSearch, SearchAlgorithm
from shardtrain.modeling.tune.search_space import check_search_space
from shardtrain.secrets import MASK, is_secret_name, redact

logger = logging.getLogger("shardtrain")

#: The file of the trial table in a published tuning result.
TRIALS_FILE = "trials.parquet"
#: Ray Tune's own result keys (not the trial's metrics).
_RAY_KEYS = {
    "trial_id",
    "experiment_tag",
    "done",
    "should_checkpoint",
    "episodes_this_iter",
    "timesteps_this_iter",
}
#: What a trial reserves when resource_per_trial is not given: no CPU (see the module doc).
_NO_CPU_BUNDLE = {"memory": float(1 << 20)}


def normalise_resources(resources: Any) -> dict[str, float] | None:
    """``resource_per_trial`` as Ray resource names (``CPU``, ``GPU``, ``memory``, custom)."""
    if resources is None:
        return None
    if not isinstance(resources, dict) or not resources:
        raise ConfigError(
            "TunerConfig.resource_per_trial must be a dict such as {'CPU': 2} or "
            f"{{'CPU': 1, 'GPU': 1}}, got {resources!r}.",
            field="resource_per_trial",
        )
    out: dict[str, float] = {}
    for key, value in resources.items():
        name = {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}.get(str(key).lower(), str(key))
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ConfigError(
                f"TunerConfig.resource_per_trial[{key!r}] must be a number >= 0, got {value!r}.",
                field="resource_per_trial",
            )
        out[name] = float(value)
    return out


@dataclass(frozen=True)
class TunerConfig:
    """How to tune: the metric and its direction, the search, and how trials run.

    Attributes:
        metric: the name of the metric to optimise, a key of what trials ``report``.
        mode: ``"min"`` or ``"max"``.
        search_alg: ``RandomSearch()`` (default), ``GridSearch()`` or ``BayesOpt()``.
        num_trials: how many configurations to try (GridSearch: every combination once).
        max_concurrent_trials: trials running at once per node (default: as many as the
            node's CPUs fit, one per CPU when trials reserve none).
        resource_per_trial: what each trial reserves, e.g. ``{"CPU": 2, "GPU": 1}``
            (default: nothing: see ``shardtrain.modeling.tune.tuner``).

    Example:
        >>> TunerConfig(metric="rmse", mode="min", num_trials=20).search_alg
        RandomSearch(random_state=None)
    """

    metric: str
    mode: str
    search_alg: SearchAlgorithm = field(default_factory=RandomSearch)
    num_trials: int = 5
    max_concurrent_trials: int | None = None
    resource_per_trial: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise ConfigError(
                f"TunerConfig.metric must name a reported metric, got {self.metric!r}.",
                field="metric",
            )
        if self.mode not in ("min", "max"):
            raise ConfigError(
                f"TunerConfig.mode must be 'min' or 'max', got {self.mode!r}.", field="mode"
            )
        if not isinstance(self.search_alg, SearchAlgorithm):
            raise ConfigError(
                "TunerConfig.search_alg must be RandomSearch(), GridSearch() or BayesOpt() "
                f"(from shardtrain.modeling.tune.search), got {self.search_alg!r}.",
                field="search_alg",
            )
        check_int(self.num_trials, "TunerConfig.num_trials", field="num_trials")
        if self.max_concurrent_trials is not None:
            check_int(
                self.max_concurrent_trials,
                "TunerConfig.max_concurrent_trials",
                field="max_concurrent_trials",
            )
        normalise_resources(self.resource_per_trial)


@dataclass
class TunerResults:
    """What ``Tuner.run`` returns.

    Attributes:
        results: one row per trial: ``trial_id``, the reported metrics, the hyperparameters
            (``config/<name>``), ``status`` (``ok`` or ``error``) and ``error``.
        best_result: the best trial's row (a one-row DataFrame).
        best_model: the model the best trial reported (None when it reported none).
        artifact: where the best model was published (with ``trials.parquet`` beside it),
            or None when there was no model to publish.
    """

    results: Any
    best_result: Any
    best_model: Any | None
    artifact: ModelArtifact | None = None
    metric: str = ""
    mode: str = "min"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the best model's ``ModelArtifact`` fields (when it was published) plus
        ``trials`` (the table's rows), ``best_result`` (its row), ``metric`` and ``mode``.
        ``ModelArtifact.from_dict`` (and so registration) reads it as the artifact."""
        base = self.artifact.to_dict() if self.artifact is not None else {}
        return {
            **base,
            # what leaves the process (XCom, a Prefect result and table): credentials masked
            "trials": redact(records(self.results)),
            "best_result": redact(records(self.best_result)[0]) if len(self.best_result) else None,
            "metric": self.metric,
            "mode": self.mode,
        }


def records(frame) -> list[dict[str, Any]]:
    """DataFrame rows as JSON-safe dicts (NaN -> None, numpy scalars -> Python)."""
    out = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        for key, value in row.items():
            if hasattr(value, "item") and callable(value.item):
                value = value.item()
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            elif value is not None and not isinstance(value, str | bool | int | float):
                value = None if _is_missing(value) else str(value)
            clean[str(key)] = value
        out.append(clean)
    return out


def _is_missing(value: Any) -> bool:
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


class Tuner:
    """Hyperparameter search with the vendor's API, on Ray Tune.

    Args:
        train_func: a function of no arguments that reads ``get_tuner_context()``
            (``get_hyper_params()``, ``get_dataset_map()``) and calls ``report(metrics=...,
            model=...)``.
        search_space: name -> ``uniform``/``loguniform``/``randint``/``choice``, a list
            (a grid for GridSearch, a choice otherwise) or a single value.
        tuner_config: a ``TunerConfig``.

    Example:
        >>> def train_func():                                          # doctest: +SKIP
        ...     ctx = get_tuner_context()
        ...     x = ctx.get_hyper_params()["x"]
        ...     ctx.report(metrics={"loss": (x - 0.3) ** 2})
        >>> results = Tuner(train_func, {"x": uniform(0, 1)},              # doctest: +SKIP
        ...                 TunerConfig(metric="loss", mode="min", num_trials=10)).run()
        >>> results.best_result["config/x"]                            # doctest: +SKIP
    """

    def __init__(self, train_func, search_space, tuner_config: TunerConfig) -> None:
        if not callable(train_func):
            raise ConfigError(
                f"train_func must be a function of no arguments, got {train_func!r}.",
                field="train_func",
            )
        try:
            required = [
                p.name
                for p in inspect.signature(train_func).parameters.values()
                if p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
        except (TypeError, ValueError):
            required = []
        if required:
            raise ConfigError(
                f"train_func must take no arguments (it reads get_tuner_context()); it requires "
                f"{required}.",
                field="train_func",
            )
        if not isinstance(tuner_config, TunerConfig):
            raise ConfigError(
                f"tuner_config must be a TunerConfig, got {type(tuner_config).__name__}.",
                field="tuner_config",
            )
        self.train_func = train_func
        self.search_space = check_search_space(search_space)
        self.tuner_config = tuner_config
        tuner_config.search_alg.check(self.search_space)

    def run(
        self,
        dataset_map: dict[str, Any] | None = None,
        *,
        artifact_stage_location: str | None = None,
        request_id: str | None = None,
        session: Any = None,
        storage_options: dict | None = None,
    ) -> TunerResults:
        """Run the trials and return their results; the best model is published.

        Args:
            dataset_map: name -> DataConnector (or anything a DataConnector is made from),
                handed to every trial by ``get_dataset_map()``.
            artifact_stage_location, request_id, session, storage_options: where the best
                model goes, as for an estimator's ``fit`` (default: the embedded stage,
                a new request id).
        """
        from shardtrain.runtime.cluster import connect

        config = self.tuner_config
        if request_id is not None:
            check_request_id(request_id)
        datasets = _check_dataset_map(dataset_map)
        connect()
        bundle, concurrency = _plan_resources(config)
        space, searcher, samples = config.search_alg.plan(
            self.search_space, config.num_trials, config.metric, config.mode, concurrency
        )
        storage = tempfile.mkdtemp(prefix="shardtrain-tune-")
        try:
            grid = _fit(
                self.train_func, datasets, config, space, searcher, samples, bundle, storage
            )
            frame, best_index, best = _table(grid, config)
            best_model: Any = None
            info: dict[str, Any] = {}
            if best.checkpoint is not None:
                best_model, info = load_reported_model(Path(best.checkpoint.path))
            artifact = _publish(
                frame,
                best_index,
                best,
                info,
                config,
                stage=artifact_stage_location,
                request_id=request_id,
                session=session,
                storage_options=storage_options,
            )
        finally:
            shutil.rmtree(storage, ignore_errors=True)
        return TunerResults(
            results=frame,
            best_result=frame.loc[[best_index]],
            best_model=best_model,
            artifact=artifact,
            metric=config.metric,
            mode=config.mode,
        )


def _check_dataset_map(dataset_map: Any) -> dict[str, Any] | None:
    if dataset_map is None:
        return None
    from shardtrain.data.data_connector import DataConnector, as_connector

    if not isinstance(dataset_map, dict) or not all(isinstance(k, str) for k in dataset_map):
        raise ConfigError(
            "dataset_map must be a dict of name -> DataConnector (e.g. {'train': ..., "
            f"'test': ...}}), got {type(dataset_map).__name__}.",
            field="dataset_map",
        )
    return {
        name: data
        if isinstance(data, DataConnector)
        else as_connector(data, f"dataset_map[{name!r}]")
        for name, data in dataset_map.items()
    }


def _plan_resources(config: TunerConfig) -> tuple[dict[str, float], int]:
    """(the bundle a trial reserves, how many trials run at once), checked against the cluster."""
    from shardtrain.runtime.resources import cluster_shape

    shape = cluster_shape()
    nodes = max(1, len(shape.node_cpus))
    wanted = normalise_resources(config.resource_per_trial)
    bundle = {k: v for k, v in (wanted or {}).items() if v > 0} or dict(_NO_CPU_BUNDLE)
    cpus, gpus = bundle.get("CPU", 0.0), bundle.get("GPU", 0.0)
    for what, need, have in (("CPU", cpus, shape.node_cpus), ("GPU", gpus, shape.node_gpus)):
        if need > max(have, default=0):
            raise ScalingConfigError(
                f"resource_per_trial asks for {need:g} {what}s per trial but no node has that "
                f"many: the cluster has {shape.describe()}. Lower resource_per_trial.",
                field="resource_per_trial",
            )
    per_node = config.max_concurrent_trials
    if per_node is None:
        fits = [
            min(c // cpus if cpus else max(1, int(c)), g // gpus if gpus else math.inf)
            for c, g in zip(shape.node_cpus, shape.node_gpus, strict=True)
        ]
        total = int(sum(fits)) or 1
    else:
        for what, need, have in (("CPU", cpus, shape.node_cpus), ("GPU", gpus, shape.node_gpus)):
            if need and per_node * need > max(have, default=0):
                raise ScalingConfigError(
                    f"Insufficient {what} resources: max_concurrent_trials={per_node} per node x "
                    f"{need:g} {what}s per trial = {per_node * need:g}, but the largest node has "
                    f"{max(have, default=0):g} ({shape.describe()}). Lower max_concurrent_trials "
                    "or resource_per_trial.",
                    field="max_concurrent_trials",
                )
        total = per_node * nodes
    return bundle, max(1, min(total, config.num_trials))


@contextlib.contextmanager
def _quiet_ray_tune():
    """Ray Tune without its console tables and auto loggers (TensorBoard/CSV/JSON files):
    results reach the caller as ``TunerResults``, and trial errors in the raised error."""
    saved = {
        k: os.environ.get(k) for k in ("RAY_AIR_NEW_OUTPUT", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    }
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _fit(train_func, datasets, config, space, searcher, samples, bundle, storage):
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, train_func=train_func, dataset_map=datasets, metric=config.metric
        ),
        tune.PlacementGroupFactory([bundle]),
    )
    tune_config = tune.TuneConfig(
        metric=config.metric,
        mode=config.mode,
        search_alg=searcher,
        num_samples=samples,
        # A trial's process serves the next trial: no Python start and imports per trial.
        reuse_actors=True,
    )
    run_config = tune.RunConfig(
        name="tune",
        storage_path=storage,
        verbose=0,
        failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        # Every checkpoint is kept (one per report with a model, in a temp folder): a limit
        # would make Ray Tune snapshot its state after each one.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        callbacks=[JsonLoggerCallback()],  # the only logger: result.json, which results read
    )
    with _quiet_ray_tune():
        return tune.Tuner(
            trainable, param_space=space, tune_config=tune_config, run_config=run_config
        ).fit()


def _table(grid, config: TunerConfig):
    """(the trial DataFrame, the best row's index, the best ray Result)."""
    import pandas as pd
    from ray.tune.result import AUTO_RESULT_KEYS

    skip = set(AUTO_RESULT_KEYS) | _RAY_KEYS
    rows, by_row = [], []
    for result in grid:
        metrics = dict(result.metrics or {})
        row: dict[str, Any] = {"trial_id": metrics.get("trial_id") or Path(result.path).name}
        for key, value in metrics.items():
            if key not in skip:
                row[key] = value
        for key, value in (result.config or {}).items():
            row[f"config/{key}"] = value
        error = result.error
        row["status"] = "error" if error is not None else "ok"
        row["error"] = _error_text(error) if error is not None else None
        row["time_total_s"] = metrics.get("time_total_s")
        rows.append(row)
        by_row.append(result)
    frame = pd.DataFrame(rows)
    ok = (
        frame[(frame["status"] == "ok") & frame.get(config.metric, pd.Series(dtype=float)).notna()]
        if config.metric in frame
        else frame.iloc[0:0]
    )
    if ok.empty:
        _raise_no_result(by_row, config)
    values = ok[config.metric].astype(float)
    best_index = values.idxmin() if config.mode == "min" else values.idxmax()
    return frame, best_index, by_row[best_index]


def _cause(error: BaseException) -> BaseException:
    """The user's exception inside Ray's wrappers (RayTaskError keeps it as ``cause``)."""
    seen = error
    for _ in range(5):
        inner = getattr(seen, "cause", None) or seen.__cause__
        if inner is None or inner is seen:
            break
        seen = inner
    return seen


def _error_text(error: BaseException) -> str:
    cause = _cause(error)
    return f"{type(cause).__name__}: {cause}"


def _raise_no_result(results, config: TunerConfig) -> None:
    failed = [r for r in results if r.error is not None]
    if not failed:
        raise MetricNotReportedError(
            f"no trial reported {config.metric!r}: call get_tuner_context().report(metrics="
            f"{{{config.metric!r}: value}}) in train_func.",
            metric=config.metric,
            reported=[],
        )
    first = failed[0]
    cause = _cause(first.error)
    if isinstance(cause, MetricNotReportedError):
        raise MetricNotReportedError(
            f"{cause.message} ({len(failed)} of {len(results)} trials failed this way or "
            "otherwise).",
            **cause.details,
        ) from first.error
    trial_id = (first.metrics or {}).get("trial_id") or Path(first.path).name
    raise TuneError(
        f"every trial failed ({len(failed)} of {len(results)}); the first, {trial_id}, with "
        f"{type(cause).__name__}: {cause}. Fix train_func (its traceback is in this error's "
        "worker_traceback) and run again.",
        trial_id=trial_id,
        worker_traceback=str(first.error),
    ) from first.error


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    return value if isinstance(value, bool | int | float | str) or value is None else str(value)


def _publish(frame, best_index, best, info, config, **where) -> ModelArtifact | None:
    """Publish the best trial's safe-format model with the trial table beside it."""
    from shardtrain.model.publish import publish_model

    model_file = info.get("model_file")
    if best.checkpoint is None:
        logger.info("the best trial reported no model: nothing is published")
        return None
    if not model_file:
        logger.warning(
            "the best trial's model (%s) has no safe format here (XGBoost, LightGBM and PyTorch "
            "models do): it is returned as best_model but not published",
            info.get("type"),
        )
        return None
    row = frame.loc[best_index]
    metrics = {
        k: float(row[k])
        for k in frame.columns
        if k not in ("trial_id", "status", "error", "time_total_s")
        and not k.startswith("config/")
        and isinstance(_plain(row[k]), int | float)
        and not isinstance(_plain(row[k]), bool)
        and row[k] == row[k]
    }
    params = {k[len("config/") :]: _plain(row[k]) for k in frame.columns if k.startswith("config/")}
    with tempfile.TemporaryDirectory(prefix="shardtrain-tune-publish-") as tmp:
        folder = Path(tmp)
        shutil.copyfile(Path(best.checkpoint.path) / model_file, folder / model_file)
        table = frame.astype({"error": "string"})
        for column in [c for c in table.columns if is_secret_name(c)]:
            table[column] = MASK  # a secret-named hyper-parameter is published masked
        table.to_parquet(folder / TRIALS_FILE, index=False)
        return publish_model(
            folder,
            framework=info["framework"],
            model_file=model_file,
            stage=where["stage"],
            request_id=where["request_id"],
            session=where["session"],
            storage_options=where["storage_options"],
            metrics={"best_trial": metrics},
            params=params,
            input_cols=list(info.get("input_cols") or []),
            source={
                "tuner": {
                    "metric": config.metric,
                    "mode": config.mode,
                    "search_alg": type(config.search_alg).__name__,
                    "num_trials": int(len(frame)),
                    "best_trial_id": str(row["trial_id"]),
                    "trials_file": TRIALS_FILE,
                }
            },
        )


__all__ = ["TRIALS_FILE", "Tuner", "TunerConfig", "TunerResults"]
