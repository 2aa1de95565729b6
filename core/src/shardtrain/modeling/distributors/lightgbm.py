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

Memory (issue 18): a rank whose shard is over its memory budget (``memory_per_worker``)
builds its Dataset streamed (``lightgbm_worker.ShardSequence``): the raw features pass
through one batch at a time and only LightGBM's binned copy stays. LightGBM has no
external memory: the binned data (a byte a value up to 255 bins) and the per-row training
state must fit, which is what ``_shard_memory_bytes(streaming=True)`` counts. Below the
budget a rank reads its shard whole (Arrow), which binning from costs less CPU.
"""

from __future__ import annotations

import uuid
import warnings
from typing import Any

from shardtrain.config import FailureConfig, LightGBMScalingConfig
from shardtrain.errors import ConfigError, ScalingConfigError, WorkerError
from shardtrain.model.frameworks import LIGHTGBM
from shardtrain.modeling.distributors.boosting import (
    STREAM_BATCH_BYTES,
    BoostingEstimator,
    BoostingPlan,
    check_callbacks,
    check_thread_params,
    pop_rounds,
)
from shardtrain.runtime.collective import HubTicket
from shardtrain.runtime.resources import cluster_shape, resolve_gbdt_shape
from shardtrain.runtime.run import emit

__all__ = ["MODEL_FILE", "LightGBMEstimator", "LightGBMScalingConfig"]

MODEL_FILE = LIGHTGBM.model_file
PORT_RETRIES = 2

#: The Python runtime, LightGBM's buffers and histograms: what a rank needs whatever its shard.
BASE_BYTES = 64 * 2**20
#: Per-row training state beside the binned data, for one class (LightGBM's float32
#: gradient and hessian, float64 score, float32 label, int32 row indices and bagging
#: buffers: ~32 bytes, rounded up); each further class adds 16 (gradient, hessian, score).
PER_ROW_STATE_BYTES = 48
PER_CLASS_ROW_BYTES = 16
#: LightGBM's sample for the bin boundaries: per sampled value a float64 and an int32 index.
SAMPLE_VALUE_BYTES = 12
DEFAULT_SAMPLE_ROWS = 200_000  # LightGBM's bin_construct_sample_cnt
#: Streaming: decoded batches a rank may hold at once (the one in hand, its matrix, and the
#: reader's read-ahead: ``data.parquet.READAHEAD_BYTES`` of them plus a decoded chunk; kept at
#: its earlier, larger value: an over-estimate only sends a shard to streaming sooner).
STREAM_BATCHES_HELD = 20


class LightGBMEstimator(BoostingEstimator):
    """Distributed LightGBM on Ray with the vendor's API.

    Args:
        n_estimators: boosting rounds (``n_estimators``/``num_iterations`` in ``params`` win).
        objective: the objective (``objective`` in ``params`` wins).
        params: LightGBM parameters; ``early_stopping_rounds`` (or ``early_stopping_round``)
            stops on the eval set's first metric, decided globally.
        scaling_config: a ``LightGBMScalingConfig`` (default: everything the cluster has).
        callbacks: LightGBM callbacks (callables taking ``lightgbm.callback.CallbackEnv``, as
            ``lightgbm.train`` takes them), run on every rank. They see the global metrics in
            ``env.evaluation_result_list`` (all ranks' rows, the same on every rank), so one
            that stops training (``EarlyStopException``) stops every rank on the same round.
        failure_config: a ``FailureConfig`` (restarts and checkpoint frequency).

    Example:
        >>> est = LightGBMEstimator(params={"num_leaves": 63})                  # doctest: +SKIP
        >>> booster = est.fit(train_connector, ["A", "B"], "Y", eval_set=eval_connector)  # doctest: +SKIP
    """

    spec = LIGHTGBM
    forbidden_name_chars = '",:[]{}'
    metric_keys = ("metric", "metrics", "metric_types")
    #: A shard over its memory budget builds its Dataset streamed (never whole); LightGBM
    #: still holds the binned data, so the budget must cover that (``_shard_memory_bytes``).
    can_stream = True

    def __init__(
        self,
        n_estimators: int = 100,
        objective: str = "regression",
        params: dict[str, Any] | None = None,
        scaling_config: LightGBMScalingConfig | None = None,
        callbacks: list | None = None,
        failure_config: FailureConfig | None = None,
    ) -> None:
        if isinstance(callbacks, FailureConfig) and failure_config is None:
            # 0.1 took failure_config fifth, where the vendor (and XGBEstimator) take callbacks
            warnings.warn(
                "LightGBMEstimator's fifth positional argument is callbacks since 0.2: pass "
                "failure_config=... by keyword.",
                DeprecationWarning,
                stacklevel=2,
            )
            callbacks, failure_config = None, callbacks
        super().__init__(
            n_estimators,
            objective,
            params,
            scaling_config or LightGBMScalingConfig(),
            failure_config,
        )
        self.callbacks = check_callbacks(callbacks, "callables taking a CallbackEnv")
        #: Whether the last attempt's ranks built their Datasets streamed (None: no fit yet).
        self._streamed: bool | None = None

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

    def _with_params(self, booster, plan: BoostingPlan):
        """A booster loaded from a model string reports the file's parameters (every
        default, and the ranks' network: ``machines``, ``num_machines``, ports); give it
        the params it was trained with, as ``lightgbm.train`` leaves them in
        ``booster.params`` (with ``num_iterations``)."""
        params = self._user_params(plan)
        if plan.early_stopping_rounds:
            params["early_stopping_round"] = plan.early_stopping_rounds
        params["num_iterations"] = plan.rounds
        booster.params = params
        return booster

    def _param(self, names, default):
        for name in names:
            if self.params.get(name) is not None:
                return self.params[name]
        return default

    def _shard_memory_bytes(self, rows: int, num_features: int, streaming: bool) -> int:
        """Bytes a rank needs for ``rows`` x ``num_features`` (training and eval rows).

        What LightGBM keeps either way: its binned data, one byte a value for up to 255 bins
        (two up to 65535; more with ``linear_tree``, which keeps the raw values as float32
        too), the per-row training state (``PER_ROW_STATE_BYTES``, more per class) and,
        while binning, the sample it finds bin boundaries from (up to
        ``bin_construct_sample_cnt`` rows). In memory (below the budget), the shard's Arrow
        table as well, as float32 (float64 columns are read as they are: twice that).
        Streamed, instead of the table: a bounded number of batches
        (``STREAM_BATCHES_HELD`` x ``boosting.STREAM_BATCH_BYTES``).
        """
        max_bin = int(self._param(("max_bin", "max_bins"), 255) or 255)
        bin_bytes = 1 if max_bin <= 255 else 2 if max_bin <= 65535 else 4
        if self._param(("linear_tree", "linear_trees"), False):
            bin_bytes += 4
        num_class = int(self._param(("num_class", "num_classes"), 1) or 1)
        sample = min(
            rows,
            int(
                self._param(("bin_construct_sample_cnt", "subsample_for_bin"), DEFAULT_SAMPLE_ROWS)
            ),
        )
        need = (
            BASE_BYTES
            + rows * num_features * bin_bytes
            + rows * (PER_ROW_STATE_BYTES + PER_CLASS_ROW_BYTES * max(0, num_class - 1))
            + sample * num_features * SAMPLE_VALUE_BYTES
        )
        if streaming:
            return need + STREAM_BATCHES_HELD * STREAM_BATCH_BYTES
        return need + rows * 4 * (num_features + 1)

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

    def _launch(self, group, job, train_shards, eval_shards, on_progress, done, collective=None):
        from shardtrain.modeling.distributors import lightgbm_worker  # imports lightgbm

        token = uuid.uuid4().hex
        world = group.world_size
        machines = group.run(
            lightgbm_worker.prepare_rank, [dict(rank=r, token=token) for r in range(world)]
        )
        # The hub admits only this run's ranks: they prove a per-run secret, which goes to
        # them in the actor call arguments only (HubTicket never shows it).
        hub = HubTicket.new(machines[0]["ip"], machines[0]["hub_port"])
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
                callbacks=self.callbacks,
                # every rank alike: streamed when the budget check says some rank must
                streamed=job.external_memory,
            )
            for r in range(world)
        ]
        results = group.run(lightgbm_worker.train_rank, kwargs, on_progress, have_step=done)
        self._streamed = all(r.streamed for r in results)
        if self._streamed:
            emit(
                "LightGBM built each rank's Dataset streamed (over the memory budget): "
                "raw features read a batch at a time, only the binned data kept."
            )
        return results
