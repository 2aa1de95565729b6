"""Distributed LightGBM on Ray: ``LightGBMEstimator`` and ``LightGBMScalingConfig``.

Data-parallel training over LightGBM's own socket network (``tree_learner=data``, one
``machines`` entry per rank, each on a free ``local_listen_port``). Each rank builds its
``Dataset`` from its shard's Arrow table (no pandas, no numpy matrix). The training set is
evaluated only when the fit reads it (an eval set, ``verbose_eval``, ``metric``, early
stopping). LightGBM evaluates metrics on each rank's local rows only, so ranks sum per-round
metric statistics over a small TCP allreduce
(``runtime.collective``): every rank then sees the global metric, and early stopping decides
the same round everywhere (a rank stopping alone would hang the others). The rank-side code
is in ``lightgbm_worker``.
"""

from __future__ import annotations

import uuid
from typing import Any

from shardtrain.config import FailureConfig, LightGBMScalingConfig
from shardtrain.errors import ConfigError, ScalingConfigError, WorkerError
from shardtrain.model.frameworks import LIGHTGBM
from shardtrain.modeling.distributors.boosting import (
    BoostingEstimator,
    BoostingPlan,
    check_thread_params,
    pop_rounds,
)
from shardtrain.runtime.resources import cluster_shape, resolve_gbdt_shape
from shardtrain.runtime.run import emit

__all__ = ["MODEL_FILE", "LightGBMEstimator", "LightGBMScalingConfig"]

MODEL_FILE = LIGHTGBM.model_file
PORT_RETRIES = 2


class LightGBMEstimator(BoostingEstimator):
    """Distributed LightGBM on Ray with the vendor's API.

    Args:
        n_estimators: boosting rounds (``n_estimators``/``num_iterations`` in ``params`` win).
        objective: the objective (``objective`` in ``params`` wins).
        params: LightGBM parameters; ``early_stopping_rounds`` (or ``early_stopping_round``)
            stops on the eval set's first metric, decided globally.
        scaling_config: a ``LightGBMScalingConfig`` (default: everything the cluster has).
        failure_config: a ``FailureConfig`` (restarts and checkpoint frequency).

    Example:
        >>> est = LightGBMEstimator(params={"num_leaves": 63})                  # doctest: +SKIP
        >>> booster = est.fit(train_connector, ["A", "B"], "Y", eval_set=eval_connector)  # doctest: +SKIP
    """

    spec = LIGHTGBM
    forbidden_name_chars = '",:[]{}'
    metric_keys = ("metric", "metrics", "metric_types")

    def __init__(
        self,
        n_estimators: int = 100,
        objective: str = "regression",
        params: dict[str, Any] | None = None,
        scaling_config: LightGBMScalingConfig | None = None,
        failure_config: FailureConfig | None = None,
    ) -> None:
        super().__init__(
            n_estimators,
            objective,
            params,
            scaling_config or LightGBMScalingConfig(),
            failure_config,
        )

    def _resolve(self) -> BoostingPlan:
        params = dict(self.params)
        rounds = pop_rounds(
            params,
            self.n_estimators,
            ("n_estimators", "num_iterations", "num_boost_round", "num_rounds"),
        )
        params.setdefault("objective", self.objective)
        params.setdefault("verbose", -1)
        early = params.pop("early_stopping_rounds", params.pop("early_stopping_round", None))
        shape = resolve_gbdt_shape(
            self.scaling_config.num_workers,
            self.scaling_config.num_cpu_per_worker,
            self.scaling_config.use_gpu,
            cluster_shape(),
        )
        check_thread_params(params, ("num_threads", "n_jobs", "nthread"), shape.cpus)
        if (
            str(params.get("device_type", params.get("device", "cpu"))) in ("gpu", "cuda")
            and not shape.gpus
        ):
            raise ScalingConfigError(
                "params ask for a GPU but the scaling config gives workers "
                "none; set use_gpu=True or drop the GPU parameters.",
                field="use_gpu",
            )
        if params.get("tree_learner", "data") not in ("data", "data_parallel", "serial"):
            raise ConfigError(
                "LightGBMEstimator trains data-parallel (each rank holds a row "
                f"shard); tree_learner={params['tree_learner']!r} is not supported."
            )
        params["num_threads"] = int(shape.cpus)
        return BoostingPlan(params, rounds, early, shape)

    def _label_rule(self, params):
        objective = str(params.get("objective", ""))
        num_class = int(params.get("num_class", params.get("num_classes", 0)) or 0)
        if objective == "binary":
            return ("binary", 0)
        if objective in ("multiclass", "softmax", "multiclassova", "multiclass_ova", "ova"):
            return ("class", num_class)
        if objective in ("cross_entropy", "xentropy", "cross_entropy_lambda", "xentlambda"):
            return ("unit", 0)
        if objective in ("poisson", "tweedie"):
            return ("nonnegative", 0)
        if objective == "gamma":
            return ("positive", 0)
        return ("any", 0)

    def _retrying(self, attempt):
        # A reserved port is released a moment before LightGBM binds it; should another
        # process take it in that moment, LightGBM fails to bind: retry on fresh ports.
        for tries in range(PORT_RETRIES + 1):
            try:
                return attempt()
            except WorkerError as exc:
                if "Binding port" not in str(exc) or tries == PORT_RETRIES:
                    raise
                emit(
                    f"LightGBM could not bind its port ({exc.message.splitlines()[0]}); "
                    "retrying on fresh ports."
                )

    def _launch(self, group, job, train_shards, eval_shards, on_progress, done):
        from shardtrain.modeling.distributors import lightgbm_worker  # imports lightgbm

        token = uuid.uuid4().hex
        world = group.world_size
        machines = group.run(
            lightgbm_worker.prepare_rank, [dict(rank=r, token=token) for r in range(world)]
        )
        hub = (machines[0]["ip"], machines[0]["hub_port"])
        kwargs = [
            dict(
                rank=r,
                world_size=world,
                token=token,
                machines=machines,
                hub=hub,
                job=job,
                train=train_shards[r],
                evals=eval_shards[r],
            )
            for r in range(world)
        ]
        return group.run(lightgbm_worker.train_rank, kwargs, on_progress, have_step=done)
