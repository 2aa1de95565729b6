"""XGBoost's rank-side code, run inside the Ray actors (this module imports ``xgboost``; the
estimator imports it only when it launches ranks).

Each rank reads its own shard as Arrow batches into a ``QuantileDMatrix`` through
``ArrowIter`` (XGBoost reads the Arrow columns in place: no pandas, no numpy matrix) and joins
the others through XGBoost's collective; rank 0 reports each round (its global metrics when
the fit evaluates any) and the checkpoints, numbered from the start of the run, resumed or not.
XGBoost is imported without scikit-learn in the workers (``worker_imports``).
"""

from __future__ import annotations

import contextlib
import time

from shardtrain import env
from shardtrain.data import numeric
from shardtrain.modeling.distributors.boosting import BoostingJob, BoostingRankResult
from shardtrain.modeling.distributors.worker_imports import import_framework
from shardtrain.runtime.events import RoundMetrics

xgboost = import_framework("xgboost")


def shard_cache_bytes() -> int:
    """``SHARDTRAIN_SHARD_CACHE_MB`` in bytes: how much of a shard the first pass keeps."""
    return int(env.SHARD_CACHE_MB.get() * 2**20)


class ArrowIter(xgboost.DataIter):
    """An ``xgboost.DataIter`` over a shard's Arrow batches, handed to XGBoost as Arrow tables
    (read column by column in place; ``numeric.matrix_batches(arrow=True)``).

    XGBoost passes over the data twice (sketch, then bin). The first pass keeps the batches
    while they fit ``cache_bytes`` (default: ``SHARDTRAIN_SHARD_CACHE_MB``); if it finishes
    within that, the second pass replays them, else every pass streams the shard again.
    """

    def __init__(
        self,
        connector,
        input_cols,
        label_col,
        cache_bytes: int | None = None,
        label_rule=None,
        objective: str = "",
    ) -> None:
        super().__init__(release_data=True)
        self._label_rule, self._objective = label_rule, objective
        self._connector = connector
        self._input_cols = input_cols
        self._label_col = label_col
        self._cache_bytes = shard_cache_bytes() if cache_bytes is None else cache_bytes
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
                else numeric.matrix_batches(
                    self._connector,
                    self._input_cols,
                    self._label_col,
                    label_rule=self._label_rule,
                    objective=self._objective,
                    arrow=True,
                )
            )
        item = next(self._batches, None)
        if self._complete:
            return item
        if item is None:
            self._complete = self._cache is not None
        elif self._cache is not None:
            self._cached_bytes += item[0].nbytes + item[1].nbytes
            if self._cached_bytes <= self._cache_bytes:
                self._cache.append(item)
            else:
                self._cache = None  # too big: stream every pass
        return item

    def next(self, input_data) -> bool:
        item = self._next_batch()
        if item is None:
            return False
        features, label = item
        input_data(data=features, label=label, feature_names=self._input_cols)
        return True


class Report(xgboost.callback.TrainingCallback):
    """Rank 0 reports each round's global metrics, and a checkpoint every N rounds.

    XGBoost counts ``epoch`` from 0 again when it continues a model (``xgb_model``), so the
    round reported and checkpointed is ``done + epoch + 1``, ``done`` being the rounds the
    resumed model already has: a resumed run goes on from ``[done + 1]``, and a checkpoint's
    step is the number of rounds its model holds.
    """

    def __init__(self, reporter, rank: int, checkpoint_every: int, done: int = 0) -> None:
        super().__init__()
        self.reporter, self.rank, self.checkpoint_every = reporter, rank, checkpoint_every
        self.done = done

    def after_iteration(self, model, epoch, evals_log) -> bool:
        if self.rank == 0:
            metrics = {
                name: {m: float(v[-1]) for m, v in ms.items()} for name, ms in evals_log.items()
            }
            step = self.done + epoch + 1
            self.reporter.report(RoundMetrics(step, metrics))
            if self.checkpoint_every and step % self.checkpoint_every == 0:
                self.reporter.checkpoint(step, bytes(model.save_raw("ubj")))
        return False


def train_rank(
    reporter,
    *,
    rank: int,
    job: BoostingJob,
    tracker_args: dict | None,
    train,
    evals,
    callbacks,
) -> BoostingRankResult:
    """One rank of a fit (runs inside a Ray actor)."""
    communicator = (
        xgboost.collective.CommunicatorContext(**tracker_args, dmlc_task_id=str(rank))
        if tracker_args
        else contextlib.nullcontext()
    )
    params = job.params
    with communicator:
        nthread = params.get("nthread")
        started = time.perf_counter()
        dtrain = xgboost.QuantileDMatrix(
            ArrowIter(
                train,
                job.input_cols,
                job.label_col,
                label_rule=job.label_rule,
                objective=str(job.params.get("objective", "")),
            ),
            max_bin=int(params.get("max_bin", 256)),
            nthread=nthread,
        )
        # The training set is evaluated only when the fit wants its metric (an eval set, a
        # metric or verbose output asked for, early stopping): otherwise nobody reads it.
        watch = [(dtrain, "train")] if job.evaluate_train else []
        if evals is not None:
            ematrix = xgboost.QuantileDMatrix(
                ArrowIter(
                    evals,
                    job.input_cols,
                    job.label_col,
                    label_rule=job.label_rule,
                    objective=str(job.params.get("objective", "")),
                ),
                ref=dtrain,
                nthread=nthread,
            )
            watch.append((ematrix, "eval"))
        loaded = time.perf_counter()
        booster, done = None, 0
        if job.init_model is not None:
            booster = xgboost.Booster()
            booster.load_model(bytearray(job.init_model))
            done = booster.num_boosted_rounds()
        booster = xgboost.train(
            params,
            dtrain,
            num_boost_round=job.num_boost_round,
            evals=watch,
            early_stopping_rounds=job.early_stopping_rounds,
            verbose_eval=False,
            xgb_model=booster,
            callbacks=[Report(reporter, rank, job.checkpoint_every, done), *callbacks],
        )
        return BoostingRankResult(
            rows=dtrain.num_row(),
            best_iteration=getattr(booster, "best_iteration", None),
            data_seconds=loaded - started,
            training_seconds=time.perf_counter() - loaded,
            model=bytes(booster.save_raw("ubj")) if rank == 0 else None,
        )
