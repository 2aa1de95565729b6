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
            f"{worst}, {self.rows[worst]} rows, {gib(self.in_memory_bytes[worst])} in memory: "
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


def quantile_sketch_bytes(rows: int, num_features: int, max_bin: int) -> int:
    """What XGBoost's CPU quantile sketch (hist) holds while it builds a (external-memory or
    in-memory) quantile matrix: per feature, ``nlevel`` summaries of ``2 * limit`` entries of
    16 bytes, sized for ``rows`` at ``eps = 1 / (8 max_bin)``. It grows with the features and
    ``max_bin``, and only with the log of the rows. An upper bound of the measured peaks
    (issue 18: 398 MiB at 200k x 256, 157 MiB at 200k x 256 with max_bin 64, 84 MiB at
    1.6M x 32; this gives 400, 196 and 98 MiB)."""
    eps = 1.0 / (8 * max(1, max_bin))
    level, limit = 1, 0
    while True:
        limit = math.ceil(level / eps) + 1
        if (1 << level) * limit >= rows or level >= 32:
            break
        level += 1
    return num_features * level * 2 * limit * 16
