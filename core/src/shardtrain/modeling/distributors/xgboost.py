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
from typing import Any

from shardtrain.config import FailureConfig, XGBScalingConfig
from shardtrain.errors import ScalingConfigError
from shardtrain.model.frameworks import XGBOOST
from shardtrain.modeling.distributors.boosting import (
    BoostingEstimator,
    BoostingPlan,
    check_thread_params,
    extmem_batch_rows,
    pop_rounds,
)
from shardtrain.runtime.memory import quantile_sketch_bytes
from shardtrain.runtime.resources import cluster_shape, resolve_gbdt_shape

__all__ = ["MODEL_FILE", "XGBEstimator", "XGBScalingConfig"]

MODEL_FILE = XGBOOST.model_file

#: External memory: the per-row state that stays in memory while training (gradients,
#: predictions, labels and row partitions). Measured peak growth a row at 32 features on Ray
#: workers: ~66 bytes (bench/memory_scaling.py, docs/large_data.md).
EXTMEM_PER_ROW_BYTES = 32


class XGBEstimator(BoostingEstimator):
    """Distributed XGBoost on Ray with the vendor's API.

    Args:
        n_estimators: boosting rounds (``n_estimators`` or ``num_boost_round`` in ``params``
            wins).
        objective: the learning objective (``objective`` in ``params`` wins).
        params: XGBoost parameters; ``early_stopping_rounds`` is honoured across ranks.
        scaling_config: an ``XGBScalingConfig`` (default: everything the cluster has).
        callbacks: extra ``xgboost.callback.TrainingCallback`` objects, run on every rank.
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
        self.callbacks = list(callbacks or [])

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

    def _shard_memory_bytes(self, rows: int, num_features: int, streaming: bool) -> int:
        """The larger of what a rank holds while it builds its matrix and while it trains.

        Building: XGBoost's quantile sketch (``runtime.memory.quantile_sketch_bytes``: grows
        with features and ``max_bin``, only with the log of the rows; freed before training)
        and the data in flight: in memory the float32 copy of the shard, streamed two batches
        (the one read and XGBoost's copy). Training: the histograms of one tree level (16
        bytes a bin, feature and node of ``max_depth``) and, in memory, the binned matrix and
        per-row state (``BoostingEstimator``), streamed only the per-row state
        (``EXTMEM_PER_ROW_BYTES``; the binned pages are on disk, read one at a time).
        Measured: docs/large_data.md."""
        depth = min(int(self.params.get("max_depth", 6) or 6), 12)
        bins = int(self.params.get("max_bin", 256) or 256)
        histograms = 16 * num_features * bins * 2**depth
        sketch = quantile_sketch_bytes(rows, num_features, bins)
        if not streaming:
            return max(sketch, histograms) + super()._shard_memory_bytes(
                rows, num_features, streaming
            )
        batches = 2 * min(extmem_batch_rows(rows, num_features), rows) * 4 * (num_features + 1)
        return max(sketch + batches, histograms + rows * EXTMEM_PER_ROW_BYTES)

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

    def _launch(self, group, job, train_shards, eval_shards, on_progress, done):
        from shardtrain.modeling.distributors import xgboost_worker  # imports xgboost

        tracker = self._tracker(group.world_size)
        try:
            args = tracker.worker_args() if tracker is not None else None
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
        finally:
            if tracker is not None:
                with contextlib.suppress(Exception):  # after a failed run the tracker reports
                    tracker.free()  # the broken connections again: the run's error is the news

    @staticmethod
    def _tracker(world_size: int):
        if world_size == 1:
            return None
        import ray
        from xgboost.tracker import RabitTracker

        tracker = RabitTracker(
            n_workers=world_size, host_ip=ray.util.get_node_ip_address(), sortby="task", timeout=600
        )
        tracker.start()
        return tracker
