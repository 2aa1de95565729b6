"""Distributed XGBoost on Ray: ``XGBEstimator`` and ``XGBScalingConfig``.

Each rank is a Ray actor that reads its own shard as Arrow batches into a ``QuantileDMatrix``
(through a ``DataIter``: no pandas; a shard within ``SHARDTRAIN_SHARD_CACHE_MB`` is kept for
the matrix's second pass, a larger one is streamed again) and joins the others through XGBoost's
collective, with a ``RabitTracker`` on the driver. Metrics are XGBoost's global ones; rank 0
reports them each round and the driver logs, checkpoints and finally publishes the model.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

from shardtrain.config import FailureConfig
from shardtrain.errors import ScalingConfigError
from shardtrain.modeling.distributors import _gbdt
from shardtrain.runtime.resources import cluster_shape, resolve_gbdt_shape

MODEL_FILE = "model.ubj"


@dataclass(frozen=True)
class XGBScalingConfig(_gbdt.GBDTScalingConfig):
    """How many workers, CPUs and GPUs a fit uses; -1 is automatic, ``use_gpu=None`` detects.

    By default one worker per node with all of its CPUs (or one per GPU), as the vendor does.

    Example:
        >>> XGBScalingConfig(num_workers=2, num_cpu_per_worker=1)
        XGBScalingConfig(num_workers=2, num_cpu_per_worker=1, use_gpu=None)
    """


#: A shard up to this many bytes (as float32 features + label) is kept in memory after the
#: first pass, so the QuantileDMatrix's second pass (binning) does not read and convert it
#: again; a larger shard is streamed on every pass, one batch at a time.
SHARD_CACHE_BYTES = int(float(os.environ.get("SHARDTRAIN_SHARD_CACHE_MB", "1024")) * 2**20)


class _ArrowIter:
    """An ``xgboost.DataIter`` over a shard's Arrow batches (built lazily in the worker).

    XGBoost passes over the data twice (sketch, then bin). The first pass keeps the batches
    while they fit ``cache_bytes``; if it finishes within that, the second pass replays them.
    """

    def __new__(cls, connector, input_cols, label_col, cache_bytes: int = SHARD_CACHE_BYTES):
        import xgboost

        class ArrowIter(xgboost.DataIter):
            def __init__(self) -> None:
                super().__init__(release_data=True)
                self._batches = None
                self._cache: list | None = []
                self._cached_bytes = 0
                self._complete = False

            def reset(self) -> None:
                self._batches = None

            def _next_batch(self):
                if self._batches is None:
                    self._batches = (
                        iter(self._cache)
                        if self._complete
                        else _gbdt.matrix_batches(connector, input_cols, label_col)
                    )
                item = next(self._batches, None)
                if self._complete:
                    return item
                if item is None:
                    self._complete = self._cache is not None
                elif self._cache is not None:
                    self._cached_bytes += item[0].nbytes + item[1].nbytes
                    if self._cached_bytes <= cache_bytes:
                        self._cache.append(item)
                    else:
                        self._cache = None  # too big: stream every pass
                return item

            def next(self, input_data) -> bool:
                item = self._next_batch()
                if item is None:
                    return False
                features, label = item
                input_data(data=features, label=label, feature_names=input_cols)
                return True

        return ArrowIter()


def _report_callback(reporter, rank: int, checkpoint_every: int):
    import xgboost

    class Report(xgboost.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log) -> bool:
            if rank == 0:
                metrics = {
                    name: {m: float(v[-1]) for m, v in ms.items()} for name, ms in evals_log.items()
                }
                reporter.report({"round": epoch + 1, "metrics": metrics})
                if checkpoint_every and (epoch + 1) % checkpoint_every == 0:
                    reporter.checkpoint(epoch + 1, bytes(model.save_raw("ubj")))
            return False

    return Report()


def _train_rank(
    reporter,
    *,
    rank: int,
    tracker_args: dict | None,
    params: dict,
    num_boost_round: int,
    train,
    evals,
    input_cols,
    label_col,
    init_model,
    early_stopping_rounds,
    checkpoint_every,
    callbacks,
):
    """One rank of a fit (runs inside a Ray actor)."""
    import xgboost

    communicator = (
        xgboost.collective.CommunicatorContext(**tracker_args, dmlc_task_id=str(rank))
        if tracker_args
        else contextlib.nullcontext()
    )
    with communicator:
        nthread = params.get("nthread")
        started = time.perf_counter()
        dtrain = xgboost.QuantileDMatrix(
            _ArrowIter(train, input_cols, label_col),
            max_bin=int(params.get("max_bin", 256)),
            nthread=nthread,
        )
        watch = [(dtrain, "train")]
        if evals is not None:
            watch.append(
                (
                    xgboost.QuantileDMatrix(
                        _ArrowIter(evals, input_cols, label_col), ref=dtrain, nthread=nthread
                    ),
                    "eval",
                )
            )
        loaded = time.perf_counter()
        booster = None
        if init_model is not None:
            booster = xgboost.Booster()
            booster.load_model(bytearray(init_model))
        booster = xgboost.train(
            params,
            dtrain,
            num_boost_round=num_boost_round,
            evals=watch,
            early_stopping_rounds=early_stopping_rounds,
            verbose_eval=False,
            xgb_model=booster,
            callbacks=[_report_callback(reporter, rank, checkpoint_every), *callbacks],
        )
        result = {
            "rows": dtrain.num_row(),
            "best_iteration": getattr(booster, "best_iteration", None),
            "seconds": {"data": loaded - started, "training": time.perf_counter() - loaded},
        }
        if rank == 0:
            result["model"] = bytes(booster.save_raw("ubj"))
        return result


def _xgb_predictor(model: bytes):
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(bytearray(model))
    return lambda features: booster.inplace_predict(features)


class XGBEstimator(_gbdt.DistributedGBDT):
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

    framework = "xgboost"
    model_file = MODEL_FILE
    _predictor = staticmethod(_xgb_predictor)

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

    def _resolve(self):
        params = dict(self.params)
        rounds = _gbdt.pop_rounds(params, self.n_estimators, ("num_boost_round", "n_estimators"))
        params.setdefault("objective", self.objective)
        early = params.pop("early_stopping_rounds", None)
        params.setdefault("tree_method", "hist")
        shape = resolve_gbdt_shape(
            self.scaling_config.num_workers,
            self.scaling_config.num_cpu_per_worker,
            self.scaling_config.use_gpu,
            cluster_shape(),
        )
        _gbdt.check_thread_params(params, ("nthread", "n_jobs"), shape.cpus)
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
        return params, rounds, early, shape

    def _launch(self, group, job, train_shards, eval_shards, on_progress, done):
        tracker = self._tracker(group.world_size)
        try:
            args = tracker.worker_args() if tracker is not None else None
            kwargs = [
                dict(
                    job,
                    rank=rank,
                    tracker_args=args,
                    train=train_shards[rank],
                    evals=eval_shards[rank],
                    callbacks=self.callbacks,
                )
                for rank in range(group.world_size)
            ]
            return group.run(_train_rank, kwargs, on_progress, have_step=done)
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

    def _load(self, model: bytes):
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(bytearray(model))
        return booster

    def _dump(self, booster) -> bytes:
        return bytes(booster.save_raw("ubj"))
