"""A group of Ray actors, one per rank, in a placement group; and a pool that keeps them warm.

Starting a Python process and importing xgboost/pyarrow/torch costs ~2 s here, which would
dominate small jobs, so groups are kept between fits of the same driver, keyed by their
shape, and dropped after ``SHARDTRAIN_WORKER_IDLE_S`` seconds idle (``shardtrain.env``), on
``shutdown_workers()``, or when another shape needs the resources. Each fit still brings its
own collective (tracker, ports, process group), so nothing carries over from one fit to the
next but the warm process.

The driver runs a function on every rank and polls rank 0 for progress events (metrics per
round, checkpoints) while it waits. The first failure on any rank tears the group down, so
no rank is left hanging in a collective, and reaches the caller with the rank and the
original traceback.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from shardtrain import env
from shardtrain.errors import ScalingConfigError, ShardtrainError, WorkerDiedError, WorkerError
from shardtrain.runtime.events import Snapshot
from shardtrain.runtime.resources import WorkerShape, cluster_shape
from shardtrain.runtime.worker_context import WorkerInfo, bind_worker

__all__ = ["Reporter", "WorkerDiedError", "WorkerGroup", "lease", "shutdown_workers"]

logger = logging.getLogger("shardtrain.runtime")

POLL_INTERVAL_S = 0.05
#: How long a warm group's actors have to answer before the group counts as dead.
HEALTH_TIMEOUT_S = 10.0
#: How long one placement try waits; between tries idle groups give way to the waiting fit.
PLACEMENT_TRY_S = 1.0
#: How often a queued fit looks again without being woken (resources freed elsewhere).
QUEUE_RECHECK_S = 5.0
#: After a rank fails, how long to look for a peer that died (the root cause) before reporting.
DEATH_GRACE_S = 3.0

#: What ``on_progress`` receives: the new events (records from ``runtime.events``) and the
#: newest snapshot past the one the driver has (or None).
ProgressCallback = Callable[[list[Any], Snapshot | None], None]


class Reporter:
    """Handed to the rank function: events and checkpoints for the driver to pick up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Any] = []
        self._snapshot: Snapshot | None = None

    def report(self, event: Any) -> None:
        with self._lock:
            self._events.append(event)

    def checkpoint(self, step: int, data: bytes) -> None:
        with self._lock:
            self._snapshot = Snapshot(step, data)

    def take(self, cursor: int, have_step: int) -> tuple[list[Any], Snapshot | None]:
        with self._lock:
            snapshot = self._snapshot
            if snapshot is not None and snapshot.step <= have_step:
                snapshot = None
            return self._events[cursor:], snapshot


class _TrainWorker:
    """The actor: runs one rank's function at a time; a second thread answers polls."""

    def __init__(self, rank: int) -> None:
        self.rank = rank  # an actor serves the same rank of its group for its whole life
        self.reporter = Reporter()

    def __repr__(self) -> str:  # Ray prefixes this worker's log lines with it
        return f"TrainWorker(rank={self.rank})"

    def info(self) -> dict[str, Any]:
        import ray

        return {
            "ip": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        }

    def run(self, rank: int, world_size: int, fn: Callable, kwargs: dict[str, Any]) -> Any:
        self.reporter = Reporter()
        with bind_worker(WorkerInfo(rank=rank, world_size=world_size)):
            return fn(self.reporter, **kwargs)

    def poll(self, cursor: int, have_step: int):
        return self.reporter.take(cursor, have_step)


_actor_class = None


def _actor():
    global _actor_class
    if _actor_class is None:
        import ray

        _actor_class = ray.remote(max_concurrency=2)(_TrainWorker)
    return _actor_class


def _job_id() -> str:
    import ray

    return ray.get_runtime_context().get_job_id()


class _PlacementTimeout(ScalingConfigError):
    """Internal: one placement try ran out of time (``lease`` decides whether to try again)."""


class WorkerGroup:
    """``shape.num_workers`` actors in one placement group.

    Each bundle holds ``workers_per_bundle`` actors (a bundle is placed on one node): GBDT
    groups use one actor per bundle spread over nodes; PyTorch groups use one bundle per node
    holding that node's workers, so node and local ranks are exact.
    """

    def __init__(
        self,
        shape: WorkerShape,
        strategy: str = "SPREAD",
        workers_per_bundle: int = 1,
        placement_timeout_s: float | None = None,
    ) -> None:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.shape = shape
        self.strategy = strategy
        self.workers_per_bundle = workers_per_bundle
        self.job_id = _job_id()
        bundle = {"CPU": shape.cpus * workers_per_bundle}
        if shape.gpus:
            bundle["GPU"] = shape.gpus * workers_per_bundle
        self._pg = placement_group(
            [dict(bundle) for _ in range(shape.num_workers // workers_per_bundle)],
            strategy=strategy,
        )
        timeout = (
            env.PLACEMENT_TIMEOUT_S.get() if placement_timeout_s is None else placement_timeout_s
        )
        if not self._pg.wait(timeout_seconds=timeout):
            remove_placement_group(self._pg)
            raise _PlacementTimeout(
                f"could not reserve {shape.num_workers} workers x ({bundle}) within "
                "{waited} s; the cluster has "
                f"{cluster_shape().describe()} and {ray.available_resources()} free. Ask for "
                "less, or free the resources.",
                field="num_workers",
            )
        self.workers = [
            _actor()
            .options(
                num_cpus=shape.cpus,
                num_gpus=shape.gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._pg, i // workers_per_bundle
                ),
            )
            .remote(i)
            for i in range(shape.num_workers)
        ]
        self.infos = ray.get([w.info.remote() for w in self.workers])
        self.alive = True

    @property
    def world_size(self) -> int:
        return len(self.workers)

    def healthy(self, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
        """Every actor answers (a warm worker may have been killed while idle)."""
        import ray

        try:
            ray.get([w.info.remote() for w in self.workers], timeout=timeout_s)
        except Exception:  # dead actor, lost node, no answer in time
            return False
        return True

    def run(
        self,
        fn: Callable,
        rank_kwargs: list[dict[str, Any]],
        on_progress: ProgressCallback | None = None,
        have_step: int = 0,
    ) -> list[Any]:
        """``fn(reporter, **rank_kwargs[rank])`` on every rank; results in rank order."""
        import ray

        refs = [
            w.run.remote(rank, self.world_size, fn, kwargs)
            for rank, (w, kwargs) in enumerate(zip(self.workers, rank_kwargs, strict=True))
        ]
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        pending, cursor = list(refs), 0
        try:
            while pending:
                ready, pending = ray.wait(
                    pending, num_returns=len(pending), timeout=POLL_INTERVAL_S
                )
                failed = [ref for ref in ready if self._error(ref, rank_of[ref])]
                if failed:
                    self._raise_root_cause(failed, pending, rank_of)
                if on_progress is not None:
                    events, snapshot = ray.get(self.workers[0].poll.remote(cursor, have_step))
                    cursor += len(events)
                    if snapshot is not None:
                        have_step = snapshot.step
                    if events or snapshot is not None:
                        on_progress(events, snapshot)
            return ray.get(refs)
        except BaseException:
            self.shutdown()  # peers may hang in a collective: never leave them running
            raise

    @staticmethod
    def _error(ref, rank: int) -> ShardtrainError | None:
        """The failure behind a finished ref, as a shardtrain error (None if it succeeded)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            ray.get(ref)
        except RayActorError as exc:
            return WorkerDiedError(
                f"worker rank {rank} died ({type(exc).__name__}: {str(exc).splitlines()[0]}).",
                rank=rank,
                worker_traceback=str(exc),
            )
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ShardtrainError):
                cause.rank = rank
                cause.details["rank"] = rank
                return cause
            summary = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
            return WorkerError(
                f"worker rank {rank} failed: {summary}\n{exc}", rank=rank, worker_traceback=str(exc)
            )
        return None

    def _raise_root_cause(self, failed, pending, rank_of) -> None:
        """When one rank fails its peers fail too (a broken collective): report the rank that
        started it. A death outranks a refused input, which outranks anything else."""
        import ray

        def severity(error) -> int:
            if isinstance(error, WorkerDiedError):
                return 0
            return 2 if isinstance(error, WorkerError) else 1

        errors = [self._error(ref, rank_of[ref]) for ref in failed]
        if pending and min(map(severity, errors)) > 0:
            late, _ = ray.wait(pending, num_returns=len(pending), timeout=DEATH_GRACE_S)
            errors += [e for e in (self._error(ref, rank_of[ref]) for ref in late) if e]
        raise min(errors, key=severity)

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        if not self.alive:
            return
        self.alive = False
        for worker in self.workers:
            try:
                ray.kill(worker, no_restart=True)
            except Exception:  # already dead
                pass
        try:
            remove_placement_group(self._pg)
        except Exception:
            pass
        _forget(self)


# -- the warm pool -------------------------------------------------------------------------------

_lock = threading.Lock()
#: Notified whenever a leased group is given back (or dropped): queued fits look again.
_released = threading.Condition(_lock)
_placing = 0  # leases of this process creating a group right now
_idle: list[tuple[WorkerGroup, float]] = []
_busy: list[WorkerGroup] = []


def _idle_seconds() -> float:
    return env.WORKER_IDLE_S.get()


def _forget(group: WorkerGroup) -> None:
    with _released:
        _idle[:] = [(g, t) for g, t in _idle if g is not group]
        if group in _busy:
            _busy.remove(group)
        _released.notify_all()


def _sweep() -> None:
    """Drop idle groups past their idle time or from a previous Ray session."""
    now = time.monotonic()
    with _lock:
        stale = [g for g, t in _idle if now - t > _idle_seconds() or g.job_id != _job_id()]
    for group in stale:
        group.shutdown()


@contextmanager
def lease(
    shape: WorkerShape, strategy: str = "SPREAD", workers_per_bundle: int = 1
) -> Iterator[WorkerGroup]:
    """A worker group of this shape: a healthy warm one when the pool has it, else a new one.

    Idle groups of other shapes give way (their resources go to the new group). When other
    fits of this process hold the workers it needs, the fit queues until one of them gives a
    group back, so fits from several threads of one driver run one after another.
    """
    global _placing
    _sweep()
    key = (shape, strategy, workers_per_bundle)
    timeout = env.PLACEMENT_TIMEOUT_S.get()
    deadline = time.monotonic() + timeout
    while True:
        with _lock:
            index = next(
                (
                    i
                    for i, (g, _) in enumerate(_idle)
                    if (g.shape, g.strategy, g.workers_per_bundle) == key
                ),
                None,
            )
            group = _idle.pop(index)[0] if index is not None else None
            others = [g for g, _ in _idle] if group is None else []
            if group is None:
                others_active = bool(_busy) or _placing > 0
                _placing += 1
            else:
                _busy.append(group)  # leased: no other thread may take or sweep it
        if group is not None:
            if group.healthy():
                break
            logger.info("a warm worker group has a dead worker; starting a new one")
            group.shutdown()
            continue
        for other in others:  # idle groups give way to a fit that needs their resources
            other.shutdown()
        try:
            group = WorkerGroup(
                shape,
                strategy,
                workers_per_bundle,
                placement_timeout_s=min(PLACEMENT_TRY_S, max(deadline - time.monotonic(), 0)),
            )
        except _PlacementTimeout as exc:
            if others_active:  # queue behind the fits of this process: no deadline
                deadline = time.monotonic() + timeout
            elif time.monotonic() >= deadline:
                raise ScalingConfigError(
                    exc.message.format(waited=f"{timeout:g}"), **exc.details
                ) from None
            with _released:  # until a fit of this process gives a group back
                _released.wait(QUEUE_RECHECK_S if others_active else 0.1)
            continue
        finally:
            with _lock:
                _placing -= 1
        with _lock:
            _busy.append(group)
        break
    try:
        yield group
    finally:
        with _released:
            if group in _busy:
                _busy.remove(group)
            if group.alive:
                _idle.append((group, time.monotonic()))
            _released.notify_all()
        if group.alive:
            timer = threading.Timer(_idle_seconds() + 0.5, _sweep)
            timer.daemon = True
            timer.start()


def shutdown_workers(include_busy: bool = True) -> int:
    """Kill pooled worker groups (and running ones unless ``include_busy=False``)."""
    with _lock:
        groups = [g for g, _ in _idle] + (list(_busy) if include_busy else [])
    for group in groups:
        group.shutdown()
    return len(groups)
