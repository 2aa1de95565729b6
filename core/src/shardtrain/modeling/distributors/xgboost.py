"""Distributed XGBoost on Ray: ``XGBEstimator`` and ``XGBScalingConfig``.

Each rank is a Ray actor that reads its own shard as Arrow batches into a ``QuantileDMatrix``
(through a ``DataIter`` handing XGBoost the Arrow columns: no pandas, no numpy matrix; a shard
within ``SHARDTRAIN_SHARD_CACHE_MB`` is kept for the matrix's second pass, a larger one is
streamed again) and joins the others through XGBoost's collective, with a ``RabitTracker`` on
the driver. Metrics are XGBoost's global ones, computed only when the fit reads them (an eval
set, ``verbose_eval``, ``eval_metric``, early stopping); rank 0 reports each round and the
driver logs, checkpoints and finally publishes the model.
The rank-side code is in ``xgboost_worker``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from shardtrain.config import FailureConfig, XGBScalingConfig
from shardtrain.errors import ConfigError, ScalingConfigError
from shardtrain.model.frameworks import XGBOOST
from shardtrain.modeling.distributors.boosting import (
    BoostingEstimator,
    BoostingPlan,
    check_callbacks,
    check_thread_params,
    pop_rounds,
)
from shardtrain.runtime.memory import extmem_rank_bytes, quantile_sketch_bytes
from shardtrain.runtime.resources import cluster_shape, resolve_gbdt_shape

__all__ = ["MODEL_FILE", "XGBEstimator", "XGBScalingConfig"]

MODEL_FILE = XGBOOST.model_file


class XGBEstimator(BoostingEstimator):
    """Distributed XGBoost on Ray with the vendor's API.

    Args:
        n_estimators: boosting rounds (``n_estimators`` or ``num_boost_round`` in ``params``
            wins).
        objective: the learning objective (``objective`` in ``params`` wins).
        params: XGBoost parameters; ``early_stopping_rounds`` is honoured across ranks.
        scaling_config: an ``XGBScalingConfig`` (default: everything the cluster has).
        callbacks: extra ``xgboost.callback.TrainingCallback`` objects, run on every rank;
            ``evals_log`` holds the global metrics (the same on every rank). Checked on the
            driver: a list of them, that pickle.
        failure_config: a ``FailureConfig`` (restarts and checkpoint frequency).

    Example:
        >>> est = XGBEstimator(params={"max_depth": 6, "eta": 0.1})        # doctest: +SKIP
        >>> booster = est.fit(train_connector, input_cols=["A", "B"], label_col="Y",
        ...                   eval_set=eval_connector, verbose_eval=10)  # doctest: +SKIP
        >>> est.get_artifact().uri                                        # doctest: +SKIP
    """

    spec = XGBOOST
    forbidden_name_chars = "[]<"
    metric_keys = ("eval_metric",)
    #: A shard over its memory budget trains from external memory (``ExtMemQuantileDMatrix``).
    can_stream = True

    def __init__(
        self,
        n_estimators: int = 100,
        objective: str = "reg:squarederror",
        params: dict[str, Any] | None = None,
        scaling_config: XGBScalingConfig | None = None,
        callbacks: list | None = None,
        failure_config: FailureConfig | None = None,
    ) -> None:
        super().__init__(
            n_estimators, objective, params, scaling_config or XGBScalingConfig(), failure_config
        )
        self.callbacks = check_callbacks(callbacks, "xgboost.callback.TrainingCallback objects")

    def _check_callbacks(self) -> None:
        import xgboost

        for i, callback in enumerate(self.callbacks):
            if not isinstance(callback, xgboost.callback.TrainingCallback):
                raise ConfigError(
                    f"callbacks[{i}] is a {type(callback).__name__}: XGBEstimator takes "
                    "xgboost.callback.TrainingCallback objects (subclass it and override "
                    "after_iteration), as xgboost.train does.",
                    field="callbacks",
                )
        super()._check_callbacks()

    def _resolve(self) -> BoostingPlan:
        params = dict(self.params)
        rounds = pop_rounds(params, self.n_estimators, ("num_boost_round", "n_estimators"))
        params.setdefault("objective", self.objective)
        early = params.pop("early_stopping_rounds", None)
        params.setdefault("tree_method", "hist")
        shape = resolve_gbdt_shape(
            self.scaling_config.num_workers,
            self.scaling_config.num_cpu_per_worker,
            self.scaling_config.use_gpu,
            cluster_shape(),
        )
        check_thread_params(params, ("nthread", "n_jobs"), shape.cpus)
        device = str(params.get("device", "cpu"))
        if (
            device.startswith("cuda") or str(params["tree_method"]).startswith("gpu")
        ) and not shape.gpus:
            raise ScalingConfigError(
                f"params ask for a GPU (device={device!r}, tree_method="
                f"{params['tree_method']!r}) but the scaling config gives workers none; set "
                "XGBScalingConfig(use_gpu=True) or drop the GPU parameters.",
                field="use_gpu",
            )
        if shape.gpus:
            params["device"] = "cuda"
        params["nthread"] = int(shape.cpus)
        return BoostingPlan(params, rounds, early, shape)

    def _with_params(self, booster, plan: BoostingPlan):
        """The model bytes (UBJ) keep the trees but not the training parameters: a booster
        loaded from them says ``max_depth`` 6 whatever it was trained with. Set them as
        ``xgboost.train`` does (``Booster(params)``), so ``save_config()`` tells the truth."""
        items: list[tuple[str, Any]] = []
        for key, value in self._user_params(plan).items():
            if key == "eval_metric" and isinstance(value, list | tuple):
                items.extend((key, metric) for metric in value)  # as Booster() passes a list
            else:
                items.append((key, value))
        booster.set_param(items)
        return booster

    def _shard_memory_bytes(self, rows: int, num_features: int, streaming: bool) -> int:
        """The larger of what a rank holds while it builds its matrix and while it trains.

        In memory: building, XGBoost's quantile sketch (``runtime.memory.quantile_sketch_bytes``:
        grows with features and ``max_bin``, only with the log of the rows; freed before
        training) and the float32 copy of the shard; training, the histograms of one tree
        level (16 bytes a bin, feature and node of ``max_depth``), the binned matrix and
        per-row state (``BoostingEstimator``). Streamed (external memory):
        ``runtime.memory.extmem_rank_bytes`` (the sketch a group of features at a time, the
        batch in flight; training, the per-row state and histograms; the binned pages are on
        disk). Measured: docs/large_data.md."""
        depth = min(int(self.params.get("max_depth", 6) or 6), 12)
        bins = int(self.params.get("max_bin", 256) or 256)
        histograms = 16 * num_features * bins * 2**depth
        sketch = quantile_sketch_bytes(rows, num_features, bins)
        if not streaming:
            return max(sketch, histograms) + super()._shard_memory_bytes(
                rows, num_features, streaming
            )
        return extmem_rank_bytes(rows, num_features, bins, depth)

    def _label_rule(self, params):
        objective = str(params.get("objective", ""))
        num_class = int(params.get("num_class", 0) or 0)
        if objective == "binary:hinge":
            return ("binary", 0)
        if objective.startswith("binary:") or objective == "reg:logistic":
            return ("unit", 0)
        if objective.startswith("multi:"):
            return ("class", num_class)
        if objective in ("count:poisson", "reg:tweedie"):
            return ("nonnegative", 0)
        if objective == "reg:gamma":
            return ("positive", 0)
        return ("any", 0)

    @contextlib.contextmanager
    def _collective(self, world_size: int):
        """XGBoost's tracker for one attempt, started before the group is leased (its
        ``worker_args`` is then ready by the time the ranks need it); freed afterwards."""
        if world_size == 1:
            yield None
            return
        tracker = _Tracker(world_size)
        try:
            yield tracker
        finally:
            tracker.free()

    def _launch(self, group, job, train_shards, eval_shards, on_progress, done, collective=None):
        from shardtrain.modeling.distributors import xgboost_worker  # imports xgboost

        args = collective.worker_args() if collective is not None else None
        kwargs = [
            dict(
                rank=rank,
                job=job,
                tracker_args=args,
                train=train_shards[rank],
                evals=eval_shards[rank],
                callbacks=self.callbacks,
            )
            for rank in range(group.world_size)
        ]
        return group.run(xgboost_worker.train_rank, kwargs, on_progress, have_step=done)


#: A tracker started longer ago than this when its group was granted (the lease queued behind
#: other fits) is replaced by a fresh one: its bootstrap timeout counts from its start.
TRACKER_FRESH_S = 30.0
#: XGBoost's tracker bootstrap timeout: the ranks must connect within it (data loading
#: included).
TRACKER_TIMEOUT_S = 600


class _Tracker:
    """A ``RabitTracker`` on the driver, started at once; its ``worker_args`` are fetched on a
    thread. XGBoost answers ``worker_args`` only once the tracker's thread listens, polling
    every 0.1 s: asked right after ``start`` it cost every multi-rank fit up to 0.1 s, asked
    while the group is leased it is ready. (It must have answered before ``free``: a tracker
    freed before it listens blocks for its whole timeout.)"""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._start()

    def _start(self) -> None:
        import ray
        from xgboost.tracker import RabitTracker

        self.started = time.monotonic()
        self._tracker = RabitTracker(
            n_workers=self.world_size,
            host_ip=ray.util.get_node_ip_address(),
            sortby="task",
            timeout=TRACKER_TIMEOUT_S,
        )
        self._tracker.start()
        self._args: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._ready = threading.Thread(
            target=self._fetch_args, name="shardtrain-xgb-tracker", daemon=True
        )
        self._ready.start()

    def _fetch_args(self) -> None:
        try:
            self._args = self._tracker.worker_args()
        except BaseException as exc:  # reported to the caller of worker_args
            self._error = exc

    def worker_args(self) -> dict[str, Any]:
        """What each rank's ``CommunicatorContext`` gets (host and port of the tracker)."""
        if time.monotonic() - self.started > TRACKER_FRESH_S:
            self.free()
            self._start()
        self._ready.join()
        if self._error is not None:
            raise self._error
        assert self._args is not None
        return dict(self._args)

    def free(self) -> None:
        self._ready.join()
        # after a failed run the tracker reports the broken connections again: the run's
        # error is the news
        with contextlib.suppress(Exception):
            self._tracker.free()
