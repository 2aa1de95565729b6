"""Each rank's memory budget, and the check of every shard against it before workers start.

Without a budget a rank that cannot hold its shard is found out late: the OS or Ray's memory
monitor kills it mid-fit. The budget (``GBDTScalingConfig.memory_per_worker``) is either
stated, or derived from what Ray reports for the nodes: ``AUTO_FRACTION`` of a node's
``memory`` resource (Ray's figure for memory tasks and actors may use: the node's memory
less its object store) divided among the workers placed there, on the smallest node. Half,
because the fraction is of what the whole node offers, and the worker process itself,
Ray's own processes and the page cache of the data being read need the rest (the vendors'
rule of thumb: a node of n GB trains n/4 to n/3 GB of raw data).

The check is arithmetic on what is known before anything starts (each shard's rows from its
connector, the number of features) and each framework's estimate of what a rank keeps
(``BoostingEstimator._shard_memory_bytes``): a shard within budget trains in memory, one over
it streams (external memory) where the framework can, and is refused with
``MemoryBudgetError`` otherwise, or when even its streaming need is over the budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shardtrain.errors import MemoryBudgetError

#: The share of a node's Ray ``memory`` resource the automatic budget divides among workers.
AUTO_FRACTION = 0.5


def gib(n: float) -> str:
    """``n`` bytes, readably (``'1.50 GiB'``, ``'12.0 MiB'``)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{int(n)} B"


def node_memory() -> tuple[float, ...]:
    """Ray's ``memory`` resource of each alive node, in bytes."""
    import ray

    return tuple(float(n["Resources"].get("memory", 0)) for n in ray.nodes() if n.get("Alive"))


def automatic_budget(num_workers: int, nodes: Sequence[float]) -> int:
    """``AUTO_FRACTION`` of the smallest node's memory over the workers placed per node
    (groups are spread over the nodes: ``ceil(workers / nodes)`` at most on one)."""
    nodes = [m for m in nodes if m > 0]
    if not nodes:
        return -1  # Ray reports no memory: nothing to check against
    per_node = max(1, math.ceil(num_workers / len(nodes)))
    return int(AUTO_FRACTION * min(nodes) / per_node)


def resolve_budget(stated: int, num_workers: int) -> tuple[int, str]:
    """The budget in bytes (-1: none known) and where it came from, for messages."""
    if stated != -1:
        return stated, "memory_per_worker"
    nodes = node_memory()
    budget = automatic_budget(num_workers, nodes)
    return budget, (
        f"automatic: {AUTO_FRACTION:g} x {gib(min((m for m in nodes if m > 0), default=0))} "
        f"node memory / {max(1, math.ceil(num_workers / max(len(nodes), 1)))} worker(s) per node"
    )


@dataclass(frozen=True)
class MemoryPlan:
    """What the check decided for a fit: the budget, each rank's rows and need in memory,
    and whether the ranks stream (external memory: all ranks, if any rank must)."""

    budget: int
    source: str
    #: Each rank's rows, training and eval together (as ``time per rank`` names them).
    rows: tuple[int, ...]
    in_memory_bytes: tuple[int, ...]
    streaming_bytes: tuple[int, ...]
    external: bool
    #: After an external-memory fit: each rank's cache folder (removed by then) and its size
    #: on disk once the matrices were built (empty when the fit resumed from a finished
    #: checkpoint without running ranks).
    cache_dirs: tuple[str | None, ...] = ()
    cache_bytes: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.budget == -1:
            return "memory budget: none known (Ray reports no node memory); training in memory"
        worst = max(range(len(self.rows)), key=lambda r: self.in_memory_bytes[r])
        mode = (
            f"external memory (streaming need {gib(self.streaming_bytes[worst])})"
            if self.external
            else "in memory"
        )
        return (
            f"memory budget {gib(self.budget)} per worker ({self.source}); largest shard: rank "
            f"{worst}, {self.rows[worst]} rows of training + eval data, "
            f"{gib(self.in_memory_bytes[worst])} in memory: "
            f"training {mode}"
        )


def plan_memory(
    budget: int,
    source: str,
    rows: Sequence[int],
    num_features: int,
    need: Callable[[int, int, bool], int],
    can_stream: bool,
    framework: str,
) -> MemoryPlan:
    """Check every rank's shard (``rows[rank]``) against ``budget``; ``need(rows, features,
    streaming)`` is the framework's estimate. Raises ``MemoryBudgetError`` for a shard that
    fits neither in memory nor (where the framework can) streamed."""
    in_memory = tuple(need(r, num_features, False) for r in rows)
    streaming = tuple(
        need(r, num_features, True) if can_stream else n
        for r, n in zip(rows, in_memory, strict=True)
    )
    if budget == -1:
        return MemoryPlan(budget, source, tuple(rows), in_memory, streaming, False)
    over = [r for r, n in enumerate(in_memory) if n > budget]
    if not over:
        return MemoryPlan(budget, source, tuple(rows), in_memory, streaming, False)
    rank = max(over, key=lambda r: in_memory[r])
    workers = len(rows)
    if not can_stream:
        fits = max(1, math.ceil(workers * in_memory[rank] / budget))
        raise MemoryBudgetError(
            f"rank {rank}'s shard ({rows[rank]} rows x {num_features} features) needs "
            f"{gib(in_memory[rank])} in memory with {framework}, over the "
            f"{gib(budget)} budget per worker ({source}), and {framework} cannot stream it "
            f"from external memory here. Use more workers (about {fits}), a bigger budget "
            "(memory_per_worker, if the nodes have the memory), fewer rows or features, or "
            "XGBoost, which trains from external memory.",
            rank=rank,
            rows=rows[rank],
            needed=in_memory[rank],
            budget=budget,
            streaming=False,
        )
    worst = max(range(workers), key=lambda r: streaming[r])
    if streaming[worst] > budget:
        fits = max(1, math.ceil(workers * streaming[worst] / budget))
        raise MemoryBudgetError(
            f"rank {worst}'s shard ({rows[worst]} rows x {num_features} features) needs "
            f"{gib(streaming[worst])} even streamed from external memory with {framework} "
            f"(what stays resident: per-row gradients, predictions and labels, one batch and "
            f"the pages in use), over the {gib(budget)} budget per worker ({source}). Use more "
            f"workers (about {fits}) or a bigger budget (memory_per_worker, if the nodes have "
            "the memory).",
            rank=worst,
            rows=rows[worst],
            needed=streaming[worst],
            budget=budget,
            streaming=True,
        )
    return MemoryPlan(budget, source, tuple(rows), in_memory, streaming, True)


def release_freed_memory() -> None:
    """Hand memory freed since the last call back to the OS: Arrow's pool (mimalloc/jemalloc
    keep freed pages) and glibc's heap (``malloc_trim``: XGBoost's freed buffers stay in the
    process's heap otherwise). Measured (issue 18, external memory, 200k x 256 in one
    process): without it a process kept ~270 MiB after building the matrix, and trained with
    it; with it ~15 MiB. A no-op where glibc is not the allocator."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_TRIM: list = []


def _malloc_trim():
    if not _TRIM:
        import ctypes
        import ctypes.util

        try:
            _TRIM.append(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim)
        except (OSError, AttributeError):  # not glibc (macOS, musl)
            _TRIM.append(None)
    return _TRIM[0]


#: External memory: the most of XGBoost's quantile sketch a rank holds at a time. The sketch
#: of all features (``quantile_sketch_bytes``) grows with features x ``max_bin`` whatever the
#: budget (~600 MiB at 400k x 256, issue 18), so an external-memory rank whose sketch is
#: larger sketches its features in groups of ``sketch_group_features`` instead, one group at a
#: time (``xgboost_worker.sketch_reference``): the same cuts, one more pass over each group's
#: columns.
EXTMEM_SKETCH_BYTES = 32 * 2**20


def sketch_feature_bytes(rows: int, max_bin: int) -> int:
    """What XGBoost's CPU quantile sketch (3.x, ``hist``: ``WQuantileSketch``) holds for one
    feature of ``rows`` values while it builds a quantile matrix. Sized when it is made, from
    the column's count: ``limit = 8 max_bin nlevel + 1`` entries a level, ``nlevel`` the least
    with ``2^nlevel limit >= rows``; it holds an input queue of ``2 limit`` entries of 8 bytes,
    a temporary summary of ``2 limit`` of 16 bytes and up to ``nlevel + 1`` levels of
    ``limit`` x 16 bytes (src/common/quantile.h). So it grows with ``max_bin``, and with the
    rows only as ``log(rows)^2``. Measured (issue 18, one process, 128 features, max_bin 256,
    a batch of 8 MiB in flight): 136 / 195-201 / 245 MiB at 100k / 200k / 400k rows; this
    gives 128 / 180 / 240 MiB, plus the batch 136 / 188 / 248."""
    if rows <= 0:
        return 0
    bins = max(1, min(max_bin, rows))
    level = 1
    while True:
        limit = min(rows, 8 * bins * level + 1)
        if (1 << level) * limit >= rows or level >= 48:
            break
        level += 1
    return limit * (8 * 2 + 16 * 2 + 16 * (level + 1))


def quantile_sketch_bytes(rows: int, num_features: int, max_bin: int) -> int:
    """What XGBoost's CPU quantile sketch holds for a matrix of ``rows`` x ``num_features``
    while it builds it (in memory, or external memory in one group): per feature
    ``sketch_feature_bytes``; freed before training. Measured (issue 18, with a batch in
    flight): 398 MiB at 200k x 256, 157 MiB with max_bin 64, 84 MiB at 1.6M x 32; this gives
    360, 154 and 77 MiB, plus the batch 376, 170 and 79."""
    return num_features * sketch_feature_bytes(rows, max_bin)


def sketch_group_features(rows: int, num_features: int, max_bin: int) -> int:
    """How many features an external-memory rank of ``rows`` sketches at a time: as many as
    fit ``EXTMEM_SKETCH_BYTES`` (at least one; all when they fit, which needs no extra pass).
    ``rows`` is the largest rank's, so that every rank groups the features alike."""
    per_feature = max(1, sketch_feature_bytes(rows, max_bin))
    return max(1, min(num_features, EXTMEM_SKETCH_BYTES // per_feature))


def extmem_sketch_bytes(rows: int, num_features: int, max_bin: int) -> int:
    """The sketch an external-memory rank holds at a time: one group of features
    (``sketch_group_features``)."""
    return sketch_group_features(rows, num_features, max_bin) * sketch_feature_bytes(rows, max_bin)


#: External memory: the float32 bytes of one Arrow batch a rank reads, hence of one cache page
#: (XGBoost on CPU writes a page a batch). Smaller batches hold less while the cache is built
#: (the reader's window and XGBoost's copy follow the batch: 106 against 157 MiB at 400k x 256
#: with 4 and 16 MiB batches) but cost more per row while training (a page's row partition
#: buffers: ``EXTMEM_ROW_BYTES``), issue 18.
EXTMEM_BATCH_BYTES = 4 * 2**20


def extmem_batch_rows(rows: int, num_features: int) -> int:
    """Rows per batch (= per cache page) in external memory: ``EXTMEM_BATCH_BYTES`` of
    float32, and at least 8 pages for a small shard (at least 1024 rows a page)."""
    return max(1024, min(EXTMEM_BATCH_BYTES // (4 * (num_features + 1)), -(-rows // 8)))


#: External memory: what training holds a row (XGBoost 3.2, CPU ``hist``): gradient pairs,
#: predictions, labels, row indices and each page's row partition buffers. Measured (issue 18,
#: one process, 32 features, depth 4, 0.4M -> 1.6M rows): 66.5 bytes a row with pages of
#: 4,096 rows, 44 with pages of 65,536 (fewer partition buffers); pages of
#: ``EXTMEM_BATCH_BYTES`` have 4k rows at 256 features, 32k at 32.
EXTMEM_ROW_BYTES = 68

#: External memory, what the estimate leaves out (it is there in memory too, as the worker's
#: own fixed overhead is): the Parquet reader's window of decoded row groups and read-ahead
#: batches, 48-96 MiB of Arrow's pool at 32-256 features with row groups of 8 MiB (issue 18;
#: data/parquet.py). Measured peaks of an external-memory build with it (one process, batches
#: of ``EXTMEM_BATCH_BYTES``): sketching a group 60-100 MiB, writing the pages 82-106 MiB.
#: A budget must leave room for it (the automatic one does).
EXTMEM_READER_BYTES = 96 * 2**20


def histogram_bytes(num_features: int, max_bin: int, max_depth: int) -> int:
    """XGBoost's ``hist`` histograms of one tree: 16 bytes a bin and feature for every node
    (up to ``2^(max_depth + 1)``; they are kept for the tree being built)."""
    return 16 * num_features * max_bin * 2 ** (min(max_depth, 12) + 1)


def extmem_rank_bytes(rows: int, num_features: int, max_bin: int, max_depth: int) -> int:
    """What an external-memory XGBoost rank of ``rows`` x ``num_features`` holds at its peak
    beyond the worker's fixed overhead (the reader's window, ``EXTMEM_READER_BYTES``, comes on
    top as it does in memory): the larger of building its cache (a group of the quantile
    sketch, the batch read and XGBoost's copy of it) and training (``EXTMEM_ROW_BYTES`` a row,
    the histograms). Used by ``XGBEstimator._shard_memory_bytes`` for the budget check."""
    batch = min(extmem_batch_rows(rows, num_features), rows) * 4 * (num_features + 1)
    build = extmem_sketch_bytes(rows, num_features, max_bin) + 2 * batch
    train = rows * EXTMEM_ROW_BYTES + histogram_bytes(num_features, max_bin, max_depth)
    return max(build, train)
