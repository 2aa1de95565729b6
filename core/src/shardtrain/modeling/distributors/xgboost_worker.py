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
read again (XGBoost passes twice: sketch, then pages).
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
from pathlib import Path

from shardtrain import env
from shardtrain.data import numeric
from shardtrain.modeling.distributors.boosting import (
    BoostingJob,
    BoostingRankResult,
    extmem_batch_rows,
)
from shardtrain.modeling.distributors.worker_imports import import_framework
from shardtrain.runtime.events import RoundMetrics
from shardtrain.runtime.memory import release_freed_memory

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
        batch_rows: int = numeric.TRAIN_BATCH_ROWS,
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
        self._batches = None
        self._cache: list | None = []
        self._cached_bytes = 0
        self._complete = False

    def reset(self) -> None:
        self._batches = None
        if self._release:
            release_freed_memory()

    def _next_batch(self):
        if self._batches is None:
            self._batches = (
                iter(self._cache)
                if self._complete
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
        if self._release:
            # Arrow's pool and glibc's heap keep what was freed (the last batch, XGBoost's
            # buffers): without this an external-memory rank kept ~270 MiB more through
            # training (200k x 256, docs/large_data.md).
            del features, label, item
            release_freed_memory()
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
    with communicator, cache as folder:
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

    def matrix(connector, name, ref=None):
        data = ArrowIter(
            connector,
            job.input_cols,
            job.label_col,
            label_rule=job.label_rule,
            objective=str(params.get("objective", "")),
            cache_prefix=str(folder / name) if folder is not None else None,
            batch_rows=(
                extmem_batch_rows(connector.num_rows, len(job.input_cols))
                if folder is not None
                else numeric.TRAIN_BATCH_ROWS
            ),
        )
        kind = xgboost.ExtMemQuantileDMatrix if folder is not None else xgboost.QuantileDMatrix
        # max_bin on the eval matrix too: ExtMemQuantileDMatrix checks it against its ref's
        return kind(data, ref=ref, max_bin=int(params.get("max_bin", 256)), nthread=nthread)

    dtrain = matrix(train, "train")
    # The training set is evaluated only when the fit wants its metric (an eval set, a
    # metric or verbose output asked for, early stopping): otherwise nobody reads it.
    watch = [(dtrain, "train")] if job.evaluate_train else []
    if evals is not None:
        watch.append((matrix(evals, "eval", ref=dtrain), "eval"))
    cache_bytes = folder_bytes(folder) if folder is not None else 0
    if folder is not None:
        release_freed_memory()  # the sketch's and the builder's buffers, before training
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
    )
