"""XGBoost's rank-side code, run inside the Ray actors (this module imports ``xgboost``; the
estimator imports it only when it launches ranks).

Each rank reads its own shard as Arrow batches into a ``QuantileDMatrix`` through
``ArrowIter`` (XGBoost reads the Arrow columns in place: no pandas, no numpy matrix) and joins
the others through XGBoost's collective; rank 0 reports each round (its global metrics when
the fit evaluates any) and the checkpoints, numbered from the start of the run, resumed or not.
XGBoost is imported without scikit-learn in the workers (``worker_imports``).

External memory (issue 18): when the driver's budget check (``runtime.memory``) finds a shard
over its budget, every rank builds an ``ExtMemQuantileDMatrix`` from the same ``ArrowIter``
instead, caching its binned pages (one per Arrow batch) on the worker's local disk under
``SHARDTRAIN_EXTMEM_DIR`` (default ``<temp dir>/shardtrain-extmem``), in a folder of its own
per fit and rank, named after the worker's pid. The folder goes when the rank ends, whether it
succeeded or failed (``finally``), or when the worker's interpreter exits (``atexit``); a
worker that was killed leaves its folder behind, and the next fit on that node removes folders
whose pid is no longer alive. The iterator then keeps nothing between passes: the shard is
read again (XGBoost passes three times: shape, sketch, pages).

XGBoost's quantile sketch of all features grows with features x ``max_bin`` (~600 MiB at
400k x 256), whatever the budget: where it is over ``runtime.memory.EXTMEM_SKETCH_BYTES`` an
external-memory rank sketches its features in groups instead (``sketch_reference``), each group
an ``ExtMemQuantileDMatrix`` of those columns only, and hands XGBoost the cuts through a small
reference matrix (``ref=``), so the training matrix skips its own sketch. The cuts, and so the
model, are the same as XGBoost's own (each feature's sketch is independent of the others').
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shardtrain import env
from shardtrain.data import numeric
from shardtrain.data.parquet import decode_threads
from shardtrain.modeling.distributors.boosting import BoostingJob, BoostingRankResult
from shardtrain.modeling.distributors.worker_imports import import_framework
from shardtrain.runtime.events import RoundMetrics
from shardtrain.runtime.memory import (
    extmem_batch_rows,
    release_freed_memory,
    sketch_group_features,
)

if TYPE_CHECKING:
    import xgboost
else:
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
        cache_prefix: str | None = None,
        batch_rows: int | None = numeric.TRAIN_BATCH_ROWS,
        record_range: bool = False,
    ) -> None:
        # cache_prefix: external memory's page files (then nothing is kept between passes:
        # keeping the shard in memory is what external memory is for avoiding).
        super().__init__(cache_prefix=cache_prefix, release_data=True, on_host=False)
        if cache_prefix is not None:
            cache_bytes = 0
        # External memory: freed batches go back to the OS after each one (see next()).
        self._release = cache_prefix is not None
        self._label_rule, self._objective = label_rule, objective
        self._connector = connector
        self._input_cols = input_cols
        self._label_col = label_col
        self._cache_bytes = shard_cache_bytes() if cache_bytes is None else cache_bytes
        self._batch_rows = batch_rows
        self._batches: Iterator[Any] | None = None
        self._cache: list | None = []
        self._cached_bytes = 0
        self._complete = False
        # record_range: each column's smallest and largest value (NaN and nulls ignored), for
        # sketch_reference
        self.low: np.ndarray | None = (
            np.full(len(input_cols), np.inf, np.float32) if record_range else None
        )
        self.high: np.ndarray | None = (
            np.full(len(input_cols), -np.inf, np.float32) if record_range else None
        )

    def reset(self) -> None:
        self._batches = None
        if self._release:
            release_freed_memory()

    def _next_batch(self):
        if self._batches is None:
            self._batches = (
                iter(self._cache)
                if self._complete and self._cache is not None
                else numeric.matrix_batches(
                    self._connector,
                    self._input_cols,
                    self._label_col,
                    batch_rows=self._batch_rows,
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
            self._cached_bytes += item[0].nbytes + (item[1].nbytes if item[1] is not None else 0)
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
        low, high = self.low, self.high
        if low is not None and high is not None and features.num_rows:
            for j, column in enumerate(features.columns):
                values = column.to_numpy()  # one chunk a batch: no copy (nulls become NaN)
                low[j] = np.fmin(low[j], np.fmin.reduce(values))
                high[j] = np.fmax(high[j], np.fmax.reduce(values))
        input_data(data=features, label=label, feature_names=self._input_cols)
        if self._release:
            # Arrow's pool and glibc's heap keep what was freed (the last batch, XGBoost's
            # buffers): without this an external-memory rank kept ~270 MiB more through
            # training (200k x 256, docs/large_data.md).
            del features, label, item
            release_freed_memory()
        return True


def _global(values: np.ndarray, op) -> np.ndarray:
    """``values`` reduced over the ranks (``op``: an ``xgboost.collective.Op``), or as they are
    outside a distributed fit."""
    if not xgboost.collective.is_distributed():
        return values
    return np.asarray(xgboost.collective.allreduce(values, op), dtype=values.dtype)


def sketch_reference(connector, input_cols, max_bin: int, nthread, folder: Path, batch_rows):
    """The quantile cuts of an external-memory training matrix, sketched a group of features
    at a time (``runtime.memory.sketch_group_features``: what fits
    ``EXTMEM_SKETCH_BYTES``), as a small in-memory ``QuantileDMatrix`` to pass as ``ref``; None
    where all features fit one group (XGBoost then sketches as it builds the matrix).

    Each group is an ``ExtMemQuantileDMatrix`` of its columns only (its pages are written in
    ``folder`` and go with it). XGBoost sketches every feature on its own, sized by that
    feature's count, so a group's cuts are those of the whole matrix; in a distributed fit each
    group's sketch is merged across ranks as the whole one would be, the groups being the same
    on every rank (cut from the largest rank's rows). The reference holds, for each feature,
    its smallest value, the cuts and its largest value (257 rows at most): XGBoost's sketch of
    it gives back exactly these cuts, which is checked; where it would not (None then, with a
    warning), the matrix sketches all features itself."""
    rows = int(_global(np.array([connector.num_rows], np.float64), xgboost.collective.Op.MAX)[0])
    group = sketch_group_features(rows, len(input_cols), max_bin)
    if group >= len(input_cols):
        return None
    cuts: list[np.ndarray] = []
    lows, highs = [], []
    for start in range(0, len(input_cols), group):
        columns = input_cols[start : start + group]
        data = ArrowIter(
            connector,
            columns,
            None,
            cache_prefix=str(folder / f"sketch{start}"),
            batch_rows=batch_rows(len(columns)),
            record_range=True,
        )
        part = xgboost.ExtMemQuantileDMatrix(data, max_bin=max_bin, nthread=nthread)
        indptr, values = part.get_quantile_cut()  # per feature: min value, cuts
        del part  # its sketch is gone already; this removes its pages
        release_freed_memory()
        cuts.extend(np.split(values, indptr[1:-1].astype(np.int64)))
        assert data.low is not None and data.high is not None  # record_range=True
        lows.append(data.low)
        highs.append(data.high)
    low = _global(np.concatenate(lows), xgboost.collective.Op.MIN)
    high = _global(np.concatenate(highs), xgboost.collective.Op.MAX)
    return reference_matrix(cuts, low, high, max_bin, nthread, input_cols)


def reference_matrix(cuts, low, high, max_bin: int, nthread, input_cols):
    """A ``QuantileDMatrix`` whose cuts are ``cuts`` (one array a feature, as
    ``get_quantile_cut`` gives them: the feature's lower bound, its cut values, then the upper
    bound); ``low``/``high`` are each feature's smallest and largest value (inf/-inf: none).

    XGBoost's cuts of a feature whose sketch holds ``a[0] < ... < a[s-1]`` (its smallest and
    largest value among them) are ``a[1] .. a[min(s, max_bin) - 1]`` and an upper bound made
    from ``a[s-1]``, with a lower bound made from ``a[0]`` (src/common/quantile.cc,
    ``MakeCuts``); a column of exactly those ``s`` distinct values (at most ``max_bin + 1``)
    is sketched without loss, so it gives back the same cuts."""
    columns: list[np.ndarray] = []
    for feature, lo, hi in zip(cuts, low, high, strict=True):
        if not lo <= hi:  # no value in any rank: no cuts but the bound of an empty column
            columns.append(np.empty(0, np.float32))
            continue
        column = np.concatenate([[lo], feature[1:-1]]).astype(np.float32)
        if column[-1] != hi:  # the largest value is a cut only when s <= max_bin
            column = np.append(column, np.float32(hi))
        columns.append(column)
    data: np.ndarray = np.full(
        (max(1, max(len(c) for c in columns)), len(columns)), np.nan, np.float32
    )
    for j, column in enumerate(columns):
        data[: len(column), j] = column
    ref = xgboost.QuantileDMatrix(data, max_bin=max_bin, nthread=nthread, feature_names=input_cols)
    _, values = ref.get_quantile_cut()
    if not np.array_equal(values, np.concatenate(cuts)):
        warnings.warn(
            "shardtrain: the external-memory cuts sketched in groups of features could not be "
            "handed to XGBoost unchanged; it sketches all features at once instead (more memory)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return ref


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


#: The default root of the external-memory caches, under the system's temp dir.
EXTMEM_FOLDER = "shardtrain-extmem"
_OWNER = re.compile(r"^(\d+)-rank\d+-")  # what extmem_cache names its folders
#: Cache folders of this process not yet removed (``atexit`` removes them).
_LIVE: set[Path] = set()


def _remove_live() -> None:
    for folder in list(_LIVE):
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_remove_live)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(root: Path) -> list[Path]:
    """Remove cache folders under ``root`` left by worker processes that are gone (killed
    mid-fit: no ``finally`` ran); returns what was removed."""
    removed = []
    for child in root.iterdir() if root.is_dir() else ():
        owner = _OWNER.match(child.name)
        if owner and child.is_dir() and not _alive(int(owner.group(1))):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@contextlib.contextmanager
def extmem_cache(root: str | None, rank: int):
    """A fresh cache folder for one rank's external-memory matrices, removed on the way out
    (success or failure); stale folders of dead workers under the same root are swept first."""
    base = Path(root) if root else Path(tempfile.gettempdir()) / EXTMEM_FOLDER
    base.mkdir(parents=True, exist_ok=True)
    sweep_stale(base)
    folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-rank{rank}-", dir=base))
    _LIVE.add(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _LIVE.discard(folder)


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
    """One rank of a fit (runs inside a Ray actor): in memory, or from external memory in a
    cache folder that is removed when the rank ends, however it ends."""
    communicator = (
        xgboost.collective.CommunicatorContext(**tracker_args, dmlc_task_id=str(rank))
        if tracker_args
        else contextlib.nullcontext()
    )
    cache = extmem_cache(job.extmem_dir, rank) if job.external_memory else contextlib.nullcontext()
    # One Parquet row group decoded at a time: the matrix build is slower than one decoding
    # thread (1M x 32: 3.50 s with one, 3.47 s with two), and a second one only holds another
    # row group's state (+57-77 MiB at the build's peak; over the budget of external memory).
    with communicator, cache as folder, decode_threads(1):
        # the matrices live in _train_rank's frame: freed before the folder is removed
        try:
            return _train_rank(reporter, rank, job, train, evals, callbacks, folder)
        except BaseException as exc:
            # ... also on a failure, whose traceback would keep that frame (and the matrices)
            # alive while the folder is removed: XGBoost then warns it cannot remove its pages
            traceback.clear_frames(exc.__traceback__)
            raise


def _train_rank(reporter, rank, job, train, evals, callbacks, folder) -> BoostingRankResult:
    params = job.params
    nthread = params.get("nthread")
    started = time.perf_counter()

    max_bin = int(params.get("max_bin", 256))

    def matrix(connector, name, ref=None):
        data = ArrowIter(
            connector,
            job.input_cols,
            job.label_col,
            label_rule=job.label_rule,
            objective=str(params.get("objective", "")),
            cache_prefix=str(folder / name) if folder is not None else None,
            # in memory: batches as the storage has them (Parquet: cut within row groups,
            # never concatenated; 262,144-row batches over 131,072-row groups were copies,
            # ~60 MiB more at the peak of a 1M x 32 build)
            batch_rows=(
                extmem_batch_rows(connector.num_rows, len(job.input_cols))
                if folder is not None
                else None
            ),
        )
        if folder is None:
            return xgboost.QuantileDMatrix(data, ref=ref, max_bin=max_bin, nthread=nthread)
        if ref is None:  # the training matrix: its cuts sketched a group of features at a time
            ref = sketch_reference(
                connector,
                job.input_cols,
                max_bin,
                nthread,
                folder,
                lambda k: extmem_batch_rows(connector.num_rows, k),
            )
        # max_bin on the eval matrix too: ExtMemQuantileDMatrix checks it against its ref's
        return xgboost.ExtMemQuantileDMatrix(data, ref=ref, max_bin=max_bin, nthread=nthread)

    dtrain = matrix(train, "train")
    # The training set is evaluated only when the fit wants its metric (an eval set, a
    # metric or verbose output asked for, early stopping): otherwise nobody reads it.
    watch = [(dtrain, "train")] if job.evaluate_train else []
    eval_rows = 0
    if evals is not None:
        deval = matrix(evals, "eval", ref=dtrain)
        eval_rows = deval.num_row()
        watch.append((deval, "eval"))
    cache_bytes = folder_bytes(folder) if folder is not None else 0
    # What building freed (the sketch, the builder's buffers and, in memory, the shard's Arrow
    # batches the iterator kept) goes back to the OS before training: Arrow's pool and glibc's
    # heap keep it otherwise (1M x 32 in memory: ~230 MiB more through training).
    release_freed_memory()
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
        cache_dir=str(folder) if folder is not None else None,
        cache_bytes=cache_bytes,
        eval_rows=eval_rows,
    )
