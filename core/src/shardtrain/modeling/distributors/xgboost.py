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
    pop_rounds,
)
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
