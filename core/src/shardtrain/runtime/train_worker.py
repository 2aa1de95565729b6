"""The rank actor: a warm Python process that runs one rank's function per fit.

The cluster's pool (``worker_pool``) keeps these processes between fits of any driver, so a fit
must never see what an earlier one left: each ``run`` gets a fresh ``Reporter``, an unbound
worker context afterwards, and the process's environment variables and working directory as
they were before it. The actor's own stdout goes to the log of the job that created the pool,
not to the driver's, so ``warnings`` and ``logging`` records at WARNING and above raised during
a run are sent to the driver as ``WorkerLog`` records (re-logged there by ``worker_group``).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from shardtrain.runtime.events import Snapshot, WorkerLog
from shardtrain.runtime.memory import release_freed_memory
from shardtrain.runtime.worker_context import WorkerInfo, bind_worker

#: Ray prefixes a worker's log lines with the actor's repr; the pool names its actors so.
ACTOR_NAME = "TrainWorker"
#: Records at this level and above reach the driver.
FORWARD_LEVEL = logging.WARNING


class Reporter:
    """Handed to the rank function: events and checkpoints for the driver to pick up, and the
    rank's forwarded log records (a channel of their own, polled on every rank)."""

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id  # which run's driver may read it (polls can overtake the run)
        self._lock = threading.Lock()
        self._events: list[Any] = []
        self._logs: list[WorkerLog] = []
        self._snapshot: Snapshot | None = None

    def report(self, event: Any) -> None:
        with self._lock:
            self._events.append(event)

    def checkpoint(self, step: int, data: bytes) -> None:
        with self._lock:
            self._snapshot = Snapshot(step, data)

    def log(self, record: WorkerLog) -> None:
        with self._lock:
            self._logs.append(record)

    def take(self, cursor: int, have_step: int) -> tuple[list[Any], Snapshot | None]:
        with self._lock:
            snapshot = self._snapshot
            if snapshot is not None and snapshot.step <= have_step:
                snapshot = None
            return self._events[cursor:], snapshot

    def take_logs(self, cursor: int) -> list[WorkerLog]:
        with self._lock:
            return self._logs[cursor:]


class _Forwarder(logging.Handler):
    """Root-logger handler for one run: WARNING+ records become ``WorkerLog`` records."""

    def __init__(self, reporter: Reporter, rank: int) -> None:
        super().__init__(FORWARD_LEVEL)
        self.reporter, self.rank = reporter, rank

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self.reporter.log(WorkerLog(self.rank, record.levelno, record.name, message))
        except Exception:  # a record that cannot format must not fail the run
            self.handleError(record)


@contextmanager
def _forwarding(reporter: Reporter, rank: int) -> Iterator[None]:
    """Forward WARNING+ logging records and every shown ``warnings`` warning while inside."""
    handler = _Forwarder(reporter, rank)
    root = logging.getLogger()
    root.addHandler(handler)

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
        reporter.log(WorkerLog(rank, logging.WARNING, "py.warnings", text))

    # catch_warnings restores the filters afterwards and resets the once-per-location
    # registry, so a warning shown in an earlier fit of this process is shown again.
    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            yield
        finally:
            root.removeHandler(handler)


@contextmanager
def _isolated() -> Iterator[None]:
    """Put back the process's environment variables and working directory afterwards."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    try:
        yield
    finally:
        if dict(os.environ) != saved_env:
            os.environ.clear()
            os.environ.update(saved_env)
        try:
            if os.getcwd() != saved_cwd:
                os.chdir(saved_cwd)
        except OSError:  # the run removed the folder it was in
            os.chdir(saved_cwd)


class TrainWorker:
    """The actor: runs one rank's function at a time; a second thread answers polls."""

    def __init__(self, rank: int) -> None:
        self.rank = rank  # an actor serves the same rank of its group for its whole life
        self.reporter = Reporter()

    def __repr__(self) -> str:  # Ray prefixes this worker's log lines with it
        return f"{ACTOR_NAME}(rank={self.rank})"

    def info(self) -> dict[str, Any]:
        import ray

        return {
            "ip": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        }

    def run(
        self,
        rank: int,
        world_size: int,
        fn: Callable,
        kwargs: dict[str, Any],
        run_id: str | None = None,
    ) -> Any:
        reporter = self.reporter = Reporter(run_id)
        try:
            with (
                _isolated(),
                _forwarding(reporter, rank),
                bind_worker(WorkerInfo(rank=rank, world_size=world_size)),
            ):
                return fn(reporter, **kwargs)
        finally:
            # What the run freed goes back to the OS: glibc's heap and Arrow's pool keep freed
            # pages, so a warm worker sat on its last fit's peak until the next one (a LightGBM
            # rank of 1M x 32: 550-740 MiB, now ~300). 1-12 ms; a gc.collect() freed no more.
            release_freed_memory()

    def poll(self, cursor: int, have_step: int, run_id: str | None = None):
        reporter = self.reporter
        if run_id is not None and reporter.run_id != run_id:
            return [], None  # the run has not started here yet: nothing of a previous one
        return reporter.take(cursor, have_step)

    def poll_logs(self, cursor: int, run_id: str) -> list[WorkerLog]:
        reporter = self.reporter
        return reporter.take_logs(cursor) if reporter.run_id == run_id else []


_actor_class = None


def actor_class():
    """``TrainWorker`` as a Ray actor class (two threads: the run and the polls)."""
    global _actor_class
    if _actor_class is None:
        import ray

        _actor_class = ray.remote(max_concurrency=2)(TrainWorker)
    return _actor_class
