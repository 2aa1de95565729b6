"""LightGBM's rank-side code, run inside the Ray actors (this module imports ``lightgbm``;
the estimator imports it only when it launches ranks).

Phase 1 (``prepare_rank``): each rank reserves the port LightGBM will listen on and rank 0
opens the metric hub. Phase 2 (``train_rank``): each rank builds its ``Dataset`` and trains
data-parallel; when the fit evaluates anything, per-round metric statistics are summed over
``runtime.collective`` so every rank sees the global metric. LightGBM is imported without
scikit-learn in the workers (``worker_imports``).

The Dataset is built streamed (``ShardSequence``, issue 18): LightGBM reads the shard as a
``lightgbm.Sequence``, first the rows it samples for the bin boundaries, then every row in
batches that are binned as they come, so the raw features are never held whole; what stays
is LightGBM's binned copy (one byte a value up to 255 bins). The bin boundaries are found
the way LightGBM's in-memory paths find them (the same sample indices, and with several
ranks the network is up by then: each rank bins its share of the features from its own
sample and all ranks exchange them), so every rank, and the eval set (``reference=``), bins
alike. ``shard_table`` builds the Dataset from the whole shard as one Arrow table instead
(the former path, kept for ``streamed=False``).
"""

from __future__ import annotations

import math
import numbers
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import ray

from shardtrain.data import numeric
from shardtrain.data.parquet import decode_threads
from shardtrain.errors import SchemaError
from shardtrain.modeling.distributors.boosting import (
    STREAM_BATCH_BYTES,
    BoostingJob,
    BoostingRankResult,
)
from shardtrain.modeling.distributors.worker_imports import import_framework
from shardtrain.runtime import collective
from shardtrain.runtime.events import RoundMetrics

if TYPE_CHECKING:
    import lightgbm
else:
    lightgbm = import_framework("lightgbm")

#: Metrics that are means over rows: the global value is the row-weighted mean.
_MEAN_METRICS = {
    "l2",
    "l1",
    "mse",
    "mae",
    "mape",
    "huber",
    "fair",
    "poisson",
    "quantile",
    "gamma",
    "gamma_deviance",
    "tweedie",
    "binary_logloss",
    "binary_error",
    "multi_logloss",
    "multi_error",
    "cross_entropy",
    "cross_entropy_lambda",
    "kullback_leibler",
}
_ROOT_MEAN_METRICS = {"rmse", "l2_root"}


#: What LightGBM counts as zero when it samples (``lightgbm.basic.ZERO_THRESHOLD``).
_ZERO_THRESHOLD = getattr(lightgbm.basic, "ZERO_THRESHOLD", 1e-35)


def stream_batch_rows(num_features: int, itemsize: int = 8) -> int:
    """Rows per streamed batch: ``STREAM_BATCH_BYTES`` of features, 4096 rows at least."""
    return max(4096, STREAM_BATCH_BYTES // max(1, num_features * itemsize))


def feature_dtype(connector, input_cols) -> np.dtype:
    """float64 when a feature column is stored wider than float32 (float64, decimals), so the
    values LightGBM bins are those of the in-memory Arrow path; float32 otherwise."""
    wide = any(
        pa.types.is_float64(connector.schema.field(c).type)
        or pa.types.is_decimal(connector.schema.field(c).type)
        for c in input_cols
    )
    return np.dtype(np.float64 if wide else np.float32)


class ShardSequence(lightgbm.Sequence):
    """A shard's features as a ``lightgbm.Sequence``, read forward in batches.

    LightGBM asks a Sequence for rows in increasing order twice: single rows (the sample it
    finds bin boundaries from), then consecutive slices of ``batch_size`` rows (binned and
    pushed). Both are served from the one batch in hand; a request behind it starts a new
    pass over the shard (``passes`` counts them), so at most one batch of features, as Arrow
    and as a matrix, is held at a time.
    """

    def __init__(self, connector, input_cols, batch_rows: int | None = None) -> None:
        self._connector = connector
        self._input_cols = list(input_cols)
        self._dtype = feature_dtype(connector, input_cols)
        self.batch_size = batch_rows or stream_batch_rows(len(input_cols), self._dtype.itemsize)
        self._rows = connector.num_rows
        self._stream: Iterator[np.ndarray] | None = None
        self._start = 0  # first row of the batch in hand
        self._matrix = np.empty((0, len(self._input_cols)), self._dtype)
        self.passes = 0

    def __len__(self) -> int:
        return self._rows

    def column_batches(self):
        """The features, batch by batch, as one numpy array per column, in a pass of their own."""
        for features, _ in numeric.matrix_batches(
            self._connector, self._input_cols, None, self.batch_size, arrow=True
        ):
            table = cast(pa.Table, features)  # arrow=True: the features as a table
            yield [column.to_numpy() for column in table.columns]

    def batches(self):
        """The features, batch by batch, as a row-major matrix, in a pass of their own."""
        for columns in self.column_batches():
            # filled column by column into a column-major buffer, then transposed in one
            # blocked copy: 4x faster than writing the columns strided into a row-major one
            by_column = np.empty((len(columns), len(columns[0]) if columns else 0), self._dtype)
            for j, column in enumerate(columns):
                by_column[j] = column
            yield np.ascontiguousarray(by_column.T)

    def _seek(self, row: int) -> None:
        """Make the batch in hand the one holding ``row``."""
        if row < self._start or self._stream is None:
            self._stream = self.batches()
            self._start, self._matrix = 0, self._matrix[:0]
            self.passes += 1
        while row >= self._start + len(self._matrix):
            self._start += len(self._matrix)
            matrix = next(self._stream, None)
            if matrix is None:
                raise SchemaError(
                    f"the shard yielded {self._start} rows where its source reported "
                    f"{self._rows}; was the data changed while training read it?",
                    column=None,
                )
            self._matrix = matrix

    def __getitem__(self, idx):
        if isinstance(idx, numbers.Integral):
            row = int(idx)
            if not 0 <= row < self._rows:
                raise IndexError(idx)
            self._seek(row)
            # LightGBM samples bin boundaries from float64 rows (a fresh copy: the batch in
            # hand is not kept alive by the sample)
            return self._matrix[row - self._start].astype(np.float64)
        if isinstance(idx, slice):
            start, stop, step = idx.indices(self._rows)
            if step != 1:
                raise IndexError("a ShardSequence reads consecutive rows only")
            parts = []
            while start < stop:
                self._seek(start)
                end = min(stop, self._start + len(self._matrix))
                parts.append(self._matrix[start - self._start : end - self._start])
                start = end
            if not parts:
                return self._matrix[:0]
            return parts[0] if len(parts) == 1 else np.concatenate(parts)
        raise TypeError(f"ShardSequence index must be an int or a slice, got {type(idx).__name__}")

    def close(self) -> None:
        """Drop the batch in hand and the open pass."""
        self._stream, self._start = None, 0
        self._matrix = self._matrix[:0].copy()


class StreamedDataset(lightgbm.Dataset):
    """A ``lightgbm.Dataset`` over a ``ShardSequence``, with two of LightGBM's steps done
    batch by batch (both override private methods of ``lightgbm.Dataset`` 4.x; should a
    later LightGBM rename them, the first falls back to LightGBM's own row-at-a-time
    sampling, slower but the same sample, and the second is caught by the resume tests):

    - the sample for the bin boundaries: LightGBM's Sequence path asks for its sampled rows
      one ``seq[i]`` at a time (~4 s for its 200,000 rows); here the same rows (the same
      indices, from ``_create_sample_indices``) are taken from each batch at once;
    - resuming from a checkpoint (``init_model``), LightGBM scores the rows with the model so
      far by predicting on the Dataset's data as one matrix; over a Sequence that would read
      the shard whole, so the scores are predicted batch by batch instead (one more pass).
    """

    def _Dataset__sample(self, *, seqs, total_nrow):
        if len(seqs) != 1 or not isinstance(seqs[0], ShardSequence):
            return super()._Dataset__sample(seqs=seqs, total_nrow=total_nrow)
        indices = self._create_sample_indices(total_nrow=total_nrow)
        num_columns = len(seqs[0]._input_cols)
        parts: list[list[np.ndarray]] = [[] for _ in range(num_columns)]
        start = 0
        for columns in seqs[0].column_batches():
            rows = len(columns[0]) if columns else 0
            lo, hi = (int(i) for i in np.searchsorted(indices, [start, start + rows]))
            taken = indices[lo:hi] - start
            for j, column in enumerate(columns):
                parts[j].append(column[taken])
            start += rows
            if hi == len(indices):
                break
        # as LightGBM's own sampling: per column, the non-zero values (float64) and their
        # rows in the sample; each column's pieces are dropped as soon as it is done
        positions: np.ndarray = np.arange(len(indices), dtype=np.int32)
        values, where = [], []
        for j in range(num_columns):
            column = np.concatenate(parts[j]).astype(np.float64) if parts[j] else np.empty(0)
            parts[j] = []
            keep = (np.abs(column) > _ZERO_THRESHOLD) | np.isnan(column)
            values.append(column[keep])
            where.append(positions[keep])
        return values, where

    def _set_init_score_by_predictor(self, predictor, data, used_indices):
        if predictor is None or not isinstance(data, ShardSequence) or used_indices is not None:
            return super()._set_init_score_by_predictor(
                predictor=predictor, data=data, used_indices=used_indices
            )
        parts = [predictor.predict(batch, raw_score=True) for batch in data.batches()]
        scores = np.concatenate(parts) if parts else np.empty((0,), np.float64)
        # several classes: LightGBM's init scores are class-major (all rows of class 0, ...)
        self.set_init_score(scores.ravel(order="F") if scores.ndim > 1 else scores)
        return self


def shard_labels(connector, job: BoostingJob) -> np.ndarray:
    """The shard's label column alone (one narrow pass), checked against the objective."""
    objective = str(job.params.get("objective", ""))
    labels = [
        y
        for _, y in numeric.matrix_batches(
            connector, [], job.label_col, label_rule=job.label_rule, objective=objective, arrow=True
        )
        if y is not None  # always, with a label column
    ]
    return np.concatenate(labels) if labels else np.empty((0,), np.float32)


def shard_datasets(train, evals, job: BoostingJob, *, streamed: bool = True, batch_rows=None):
    """The rank's training Dataset and eval Dataset (or None), not yet constructed:
    LightGBM bins them inside ``train``, once its network is up (bins agree across ranks).

    ``streamed``: from ``ShardSequence`` batches (raw features never whole); otherwise from
    the whole shard as one Arrow table, dropped once binned (``free_raw_data``).
    """
    if streamed:
        dtrain = StreamedDataset(
            ShardSequence(train, job.input_cols, batch_rows),
            label=shard_labels(train, job),
            feature_name=job.input_cols,
            free_raw_data=True,
        )
        deval = None
        if evals is not None:
            deval = StreamedDataset(
                ShardSequence(evals, job.input_cols, batch_rows),
                label=shard_labels(evals, job),
                reference=dtrain,
                free_raw_data=True,
            )
        return dtrain, deval
    objective = str(job.params.get("objective", ""))
    # The Dataset holds the only reference to the shard's table, and drops it once built
    # (free_raw_data): the rank holds no second copy of its features while binning.
    dtrain = lightgbm.Dataset(
        *numeric.shard_table(train, job.input_cols, job.label_col, job.label_rule, objective),
        feature_name=job.input_cols,
        free_raw_data=True,
    )
    deval = None
    if evals is not None:
        deval = lightgbm.Dataset(
            *numeric.shard_table(evals, job.input_cols, job.label_col, job.label_rule, objective),
            reference=dtrain,
        )
    return dtrain, deval


@dataclass(frozen=True)
class LightGBMRankResult(BoostingRankResult):
    """A LightGBM rank's outcome: also whether its Datasets were built streamed."""

    streamed: bool = False


_HUBS: dict[str, socket.socket] = {}


_PORTS: dict[str, socket.socket] = {}


def _reserve_port() -> tuple[socket.socket, int]:
    """A bound socket on a free port, held until LightGBM is about to bind that port itself."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("", 0))
    return sock, sock.getsockname()[1]


def _release_port(token: str) -> None:
    held = _PORTS.pop(token, None)
    if held is not None:
        held.close()


def prepare_rank(reporter, *, rank: int, token: str) -> dict:
    """Phase 1: each rank reserves its LightGBM port; rank 0 also opens the metric hub, on
    the address Ray uses for its node (not every interface)."""
    ip = ray.util.get_node_ip_address()
    hub_port = None
    if rank == 0:
        server, hub_port = collective.open_hub(ip)
        _HUBS[token] = server
    held, port = _reserve_port()
    _PORTS[token] = held
    return {"ip": ip, "port": port, "hub_port": hub_port}


def _global_metrics(allreduce, results, counts):
    """LightGBM's per-rank ``evaluation_result_list`` -> the same global list on every rank."""
    stats = []
    for (_name, metric, value, *_), count in zip(results, counts[: len(results)], strict=True):
        squared = metric in _ROOT_MEAN_METRICS
        stats.append((value * value if squared else value) * count)
    totals = allreduce.sum(np.array(stats + list(counts[: len(results)]), dtype=np.float64))
    merged = []
    for i, (data_name, metric, _value, higher, *_) in enumerate(results):
        mean = totals[i] / max(totals[len(results) + i], 1.0)
        merged.append(
            (data_name, metric, math.sqrt(mean) if metric in _ROOT_MEAN_METRICS else mean, higher)
        )
    return merged


def _callback(
    reporter,
    rank,
    allreduce,
    rows,
    checkpoint_every,
    early_stopping_rounds,
    stop_set,
    user_callbacks=(),
):
    """LightGBM callback: global metrics each round (reported by rank 0), checkpoints, and
    early stopping decided on the global metric, so every rank stops on the same round.

    The user's after-iteration callbacks run here, in their ``order``, once the metrics are
    global: each sees ``env.evaluation_result_list`` with the global values (LightGBM's own
    are this rank's rows only), so every rank decides alike, as XGBoost's callbacks do."""
    state: dict[str, Any] = {"best": None, "best_iter": 0, "best_list": None}
    user_callbacks = sorted(user_callbacks, key=lambda cb: getattr(cb, "order", 0))

    def callback(env):
        results = env.evaluation_result_list or []
        counts = [rows[name] for name, *_ in results]
        # Every rank has the same valid sets: with none, no rank joins the allreduce.
        merged = _global_metrics(allreduce, results, counts) if results else []
        metrics: dict[str, dict[str, float]] = {}
        for name, metric, value, _ in merged:
            metrics.setdefault(name, {})[metric] = float(value)
        if rank == 0:
            reporter.report(RoundMetrics(env.iteration + 1, metrics))
            if checkpoint_every and (env.iteration + 1) % checkpoint_every == 0:
                reporter.checkpoint(env.iteration + 1, env.model.model_to_string().encode())
        if user_callbacks:
            seen = lightgbm.callback.CallbackEnv(
                model=env.model,
                params=env.params,
                iteration=env.iteration,
                begin_iteration=env.begin_iteration,
                end_iteration=env.end_iteration,
                evaluation_result_list=list(merged),
            )
            for user_callback in user_callbacks:
                user_callback(seen)
        if early_stopping_rounds:
            watched = [m for m in merged if m[0] == stop_set]
            if watched:
                _, _, score, higher = watched[0]
                better = state["best"] is None or (
                    score > state["best"] if higher else score < state["best"]
                )
                if better:
                    state.update(best=score, best_iter=env.iteration, best_list=merged)
                elif env.iteration - state["best_iter"] >= early_stopping_rounds:
                    raise lightgbm.callback.EarlyStopException(
                        state["best_iter"], state["best_list"]
                    )

    callback.order = 30  # type: ignore[attr-defined]  # LightGBM sorts callbacks by it
    return callback


def train_rank(
    reporter,
    *,
    rank: int,
    world_size: int,
    token: str,
    machines: list[dict],
    hub: collective.HubTicket,
    job: BoostingJob,
    train,
    evals,
    callbacks=(),
    streamed: bool = True,
) -> BoostingRankResult:
    """One rank of a fit (runs inside a Ray actor); ``hub``: the metric hub's address and the
    run's secret, which admits this rank (``runtime.collective``); ``streamed``: see
    ``shard_datasets``."""
    params = dict(job.params)
    if world_size > 1:
        params.update(
            tree_learner=params.get("tree_learner", "data"),
            num_machines=world_size,
            machines=",".join(f"{m['ip']}:{m['port']}" for m in machines),
            local_listen_port=machines[rank]["port"],
            pre_partition=True,
        )
    allreduce = collective.StarAllreduce(rank, world_size, hub, _HUBS.pop(token, None))
    try:
        # LightGBM reads the shard while it trains (it bins lazily): one Parquet row group
        # decoded at a time, as an XGBoost rank reads (see xgboost_worker.train_rank).
        with decode_threads(1):
            started = time.perf_counter()
            dtrain, deval = shard_datasets(train, evals, job, streamed=streamed)
            # The training set is a valid set only when the fit wants its metric (see
            # boosting.wants_train_metric): otherwise LightGBM skips evaluating it each round.
            valid_sets, names = ([dtrain], ["train"]) if job.evaluate_train else ([], [])
            rows = {"train": len(dtrain.get_label())}
            if deval is not None:
                valid_sets.append(deval)
                names.append("eval")
                rows["eval"] = len(deval.get_label())
            init = lightgbm.Booster(model_str=job.init_model.decode()) if job.init_model else None
            loaded = time.perf_counter()
            # Release the reserved port only now, so nothing else can take it while the shard
            # loads; LightGBM binds it a moment later.
            _release_port(token)
            # the user's callbacks: before an iteration as LightGBM runs them, after one
            # inside ours (global metrics)
            before = [cb for cb in callbacks if getattr(cb, "before_iteration", False)]
            after = [cb for cb in callbacks if not getattr(cb, "before_iteration", False)]
            booster = lightgbm.train(
                params,
                dtrain,
                num_boost_round=job.num_boost_round,
                valid_sets=valid_sets,
                valid_names=names,
                init_model=init,
                callbacks=[
                    _callback(
                        reporter,
                        rank,
                        allreduce,
                        rows,
                        job.checkpoint_every,
                        job.early_stopping_rounds,
                        names[-1] if names else None,
                        after,
                    ),
                    *before,
                ],
            )
    finally:
        _release_port(token)
        allreduce.close()
    # LightGBM bins lazily: "data" is reading the shard (streamed: its labels only),
    # "training" includes binning.
    return LightGBMRankResult(
        rows=rows["train"],
        eval_rows=rows.get("eval", 0),
        best_iteration=booster.best_iteration,
        data_seconds=loaded - started,
        training_seconds=time.perf_counter() - loaded,
        model=booster.model_to_string().encode() if rank == 0 else None,
        streamed=streamed,
    )
