"""Which rank this process is: set by a distributor's worker, read by ``get_shard()``.

A plain module global, not a ContextVar: each Ray actor process serves one rank at a time,
and user code may read it from threads it starts (DataLoader workers, for instance).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerInfo:
    """The calling worker's place in its group."""

    rank: int
    world_size: int


_current: WorkerInfo | None = None


def current_worker() -> WorkerInfo | None:
    """The rank of the running distributor worker, or None outside one."""
    return _current


@contextmanager
def bind_worker(info: WorkerInfo) -> Iterator[WorkerInfo]:
    """Make ``info`` the current worker for the duration of a training function."""
    global _current
    previous, _current = _current, info
    try:
        yield info
    finally:
        _current = previous
