"""A group of Ray actors, one per rank, in a placement group, leased from the cluster's pool.

Starting a Python process and importing xgboost/pyarrow/torch costs ~2 s here, which would
dominate small jobs. Groups are kept warm by the cluster's pool (``worker_pool``: a detached
actor), so a fit from any driver process (an Airflow task, a Prefect task run, a Ray Job) gets a
warm group of its shape when one is idle. Idle groups are dropped after
``SHARDTRAIN_WORKER_IDLE_S`` seconds (``shardtrain.env``), on ``shutdown_workers()``, or when
another lease needs the resources. Each fit still brings its own collective (tracker, ports,
process group), and each run on a warm process starts from the process's environment and
working directory as they were (``train_worker``): nothing carries over but the process.

The driver runs a function on every rank and polls rank 0 for progress events (metrics per
round, checkpoints) while it waits, and every rank for the warnings and log records it
forwards, re-logged here by the ``shardtrain.worker`` logger. The first failure on any rank
tears the group down, so no rank is left hanging in a collective, and reaches the caller with
the rank and the original traceback.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from shardtrain import env
from shardtrain.errors import ScalingConfigError, ShardtrainError, WorkerDiedError, WorkerError
from shardtrain.runtime import worker_pool
from shardtrain.runtime.events import Snapshot, WorkerLog
from shardtrain.runtime.resources import WorkerShape, cluster_shape
from shardtrain.runtime.train_worker import Reporter

__all__ = ["Reporter", "WorkerDiedError", "WorkerGroup", "lease", "shutdown_workers"]

logger = logging.getLogger("shardtrain.runtime")

POLL_INTERVAL_S = 0.05
#: How often every rank is asked for the log records it forwards (and once at the end).
LOG_POLL_S = 0.5
#: How long one placement try waits; between tries idle groups give way to the waiting fit.
PLACEMENT_TRY_S = 1.0
#: How long one try waits while other leases hold the cluster (the fit queues behind them).
QUEUE_TRY_S = 5.0
#: A fit queued behind other fits' workers says so (whose, how many) after this long.
WAIT_LOG_AFTER_S = 5.0
#: After a rank fails, how long to look for a peer that died (the root cause) before reporting.
DEATH_GRACE_S = 3.0
HEALTH_TIMEOUT_S = worker_pool.HEALTH_TIMEOUT_S

#: Forwarded worker warnings and log records are logged here on the driver, with the rank.
worker_logger = logging.getLogger("shardtrain.worker")

#: What ``on_progress`` receives: the new events (records from ``runtime.events``) and the
#: newest snapshot past the one the driver has (or None).
ProgressCallback = Callable[[list[Any], Snapshot | None], None]


class WorkerGroup:
    """``shape.num_workers`` actors in one placement group, leased from the cluster's pool.

    Each bundle holds ``workers_per_bundle`` actors (a bundle is placed on one node): GBDT
    groups use one actor per bundle spread over nodes; PyTorch groups use one bundle per node
    holding that node's workers, so node and local ranks are exact. The driver calls the
    actors directly; the pool owns them (``shutdown`` asks it to kill them).
    """

    def __init__(
        self,
        shape: WorkerShape,
        strategy: str,
        workers_per_bundle: int,
        grant: dict[str, Any],
        pool: Any,
        lease_id: str,
    ) -> None:
        self.shape = shape
        self.strategy = strategy
        self.workers_per_bundle = workers_per_bundle
        self.id: str = grant["id"]
        self.workers: list[Any] = grant["workers"]
        self.infos: list[dict[str, Any]] = grant["infos"]
        self.alive = True
        self._pool = pool
        self._lease = lease_id

    @property
    def world_size(self) -> int:
        return len(self.workers)

    def run(
        self,
        fn: Callable,
        rank_kwargs: list[dict[str, Any]],
        on_progress: ProgressCallback | None = None,
        have_step: int = 0,
    ) -> list[Any]:
        """``fn(reporter, **rank_kwargs[rank])`` on every rank; results in rank order."""
        import ray
        from ray.exceptions import RayActorError

        run_id = uuid.uuid4().hex
        refs = [
            w.run.remote(rank, self.world_size, fn, kwargs, run_id)
            for rank, (w, kwargs) in enumerate(zip(self.workers, rank_kwargs, strict=True))
        ]
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        pending, cursor = list(refs), 0
        logs = _LogRelay(self.workers, run_id)
        try:
            while pending:
                ready, pending = ray.wait(
                    pending, num_returns=len(pending), timeout=POLL_INTERVAL_S
                )
                failed = [ref for ref in ready if self._error(ref, rank_of[ref], self._host)]
                if failed:
                    logs.drain(final=True)
                    # What rank 0 reported since the last poll (the rounds it finished, a
                    # checkpoint) still counts: the error names the round the run got to.
                    self._final_progress(on_progress, cursor, have_step, run_id)
                    self._raise_root_cause(failed, pending, rank_of)
                if on_progress is not None:
                    try:
                        cursor, have_step = self._progress(on_progress, cursor, have_step, run_id)
                    except RayActorError as exc:  # rank 0 died, or its host vanished
                        logs.drain(final=True)
                        self._raise_rank0_lost(exc, pending, rank_of)
                logs.drain()
            logs.drain(final=True)
            return ray.get(refs)
        except BaseException:
            self.shutdown()  # peers may hang in a collective: never leave them running
            raise

    def _progress(
        self,
        on_progress: ProgressCallback,
        cursor: int,
        have_step: int,
        run_id: str,
        timeout: float | None = None,
    ) -> tuple[int, int]:
        """Hand rank 0's new events and newest snapshot to ``on_progress``; the new cursor
        and snapshot step."""
        import ray

        events, snapshot = ray.get(
            self.workers[0].poll.remote(cursor, have_step, run_id), timeout=timeout
        )
        cursor += len(events)
        if snapshot is not None:
            have_step = snapshot.step
        if events or snapshot is not None:
            on_progress(events, snapshot)
        return cursor, have_step

    def _final_progress(
        self, on_progress: ProgressCallback | None, cursor: int, have_step: int, run_id: str
    ) -> None:
        """The last poll of a failed run; rank 0 may be the rank that died."""
        if on_progress is None:
            return
        try:
            self._progress(on_progress, cursor, have_step, run_id, timeout=HEALTH_TIMEOUT_S)
        except Exception:  # rank 0 is gone, or keeping its last checkpoint failed: the
            # rank's failure, raised next, is what the caller must see
            logger.debug("no final progress from rank 0", exc_info=True)

    @staticmethod
    def _error(ref, rank: int, host_of: Callable[[int], str | None] | None = None):
        """The failure behind a finished ref, as a shardtrain error (None if it succeeded);
        ``host_of(rank)`` names the rank's node in a death."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            ray.get(ref)
        except RayActorError as exc:  # ActorDiedError, or ActorUnavailableError: host lost
            return _died(rank, exc, host_of(rank) if host_of else None)
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

        errors = [self._error(ref, rank_of[ref], self._host) for ref in failed]
        if pending and min(map(severity, errors)) > 0:
            late, _ = ray.wait(pending, num_returns=len(pending), timeout=DEATH_GRACE_S)
            errors += [e for e in (self._error(ref, rank_of[ref], self._host) for ref in late) if e]
        raise min(errors, key=severity)

    def _raise_rank0_lost(self, exc: BaseException, pending, rank_of) -> None:
        """Rank 0 did not answer its progress poll: it died, or its host vanished (Ray's
        ``ActorUnavailableError`` until it declares the node dead). The ranks' own results
        name the root cause when one comes within ``DEATH_GRACE_S``; else it is rank 0's
        death, a ``WorkerDiedError`` the run restarts on."""
        import ray

        late, rest = (
            ray.wait(pending, num_returns=len(pending), timeout=DEATH_GRACE_S)
            if pending
            else ([], [])
        )
        failed = [ref for ref in late if self._error(ref, rank_of[ref], self._host)]
        if failed:
            self._raise_root_cause(failed, rest, rank_of)
        raise _died(0, exc, self._host(0)) from exc

    def _host(self, rank: int) -> str | None:
        """The address of the node rank ``rank`` runs on (as it said when it started)."""
        try:
            return self.infos[rank].get("ip")
        except (IndexError, AttributeError):
            return None

    def shutdown(self) -> None:
        """Have the pool kill this group now (its resources come back before this returns)."""
        import ray

        if not self.alive:
            return
        self.alive = False
        try:
            ray.get(self._pool.discard.remote(self._lease), timeout=worker_pool.CALL_TIMEOUT_S)
        except Exception:  # the pool is gone, and its actors with it
            pass


def _died(rank: int, exc: BaseException, host: str | None = None) -> WorkerDiedError:
    """A rank's actor died or its host vanished, as the error a run restarts on (``host``:
    the node's address, named in the message and kept as ``error.host``)."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    on = f" on node {host}" if host else ""
    return WorkerDiedError(
        f"worker rank {rank} died{on} ({type(exc).__name__}: {first}).",
        rank=rank,
        host=host,
        worker_traceback=str(exc),
    )


class _LogRelay:
    """Fetches the records every rank forwards and logs them on the driver, in order per rank."""

    def __init__(self, workers: list[Any], run_id: str) -> None:
        self.workers, self.run_id = workers, run_id
        self.cursors = [0] * len(workers)
        self.next_at = time.monotonic() + LOG_POLL_S

    def drain(self, final: bool = False) -> None:
        """Every ``LOG_POLL_S`` (or now, when ``final``): what the ranks forwarded since."""
        import ray

        if not final and time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + LOG_POLL_S
        refs = [
            w.poll_logs.remote(c, self.run_id)
            for w, c in zip(self.workers, self.cursors, strict=True)
        ]
        for rank, ref in enumerate(refs):
            try:
                records: list[WorkerLog] = ray.get(ref, timeout=HEALTH_TIMEOUT_S)
            except Exception:  # a dead rank: its failure is reported elsewhere
                continue
            self.cursors[rank] += len(records)
            for record in records:
                worker_logger.log(
                    record.level, "[rank %d] %s: %s", record.rank, record.logger, record.message
                )


# -- leases -------------------------------------------------------------------------------------

_lock = threading.Lock()
#: This process's leased groups (``shutdown_workers`` marks them dead when it kills them).
_busy: list[WorkerGroup] = []


def _placement_error(shape: WorkerShape, workers_per_bundle: int, waited: float) -> Exception:
    import ray

    bundle = {"CPU": shape.cpus * workers_per_bundle}
    if shape.gpus:
        bundle["GPU"] = shape.gpus * workers_per_bundle
    return ScalingConfigError(
        f"could not reserve {shape.num_workers} workers x ({bundle}) within {waited:g} s; the "
        f"cluster has {cluster_shape().describe()} and {ray.available_resources()} free. Ask "
        "for less, or free the resources.",
        field="num_workers",
    )


def _run_name(request_id: str | None) -> str:
    return f"run {request_id}" if request_id else "a run without a request id"


def _holders_text(reply: dict[str, Any], elsewhere: int) -> str:
    """Who holds the workers a queued fit waits for: the pool's ``holders`` by name, the rest
    as a count (leases still placing, other pools' leases: ``elsewhere``, and all of them
    where a pool started by an older shardtrain names none)."""
    holders = reply.get("holders") or []
    parts = [
        f"{_run_name(h.get('request_id'))} holds {h.get('workers')} worker(s) "
        f"(driver pid {h.get('pid')} on {h.get('host')}, for {h.get('for_s', 0):.0f} s)"
        for h in holders
    ]
    unnamed = max(reply.get("others_busy", 0) - len(holders), 0) + elsewhere
    if unnamed:
        parts.append(f"{unnamed} other fit(s) hold or wait for {'more' if parts else 'them'}")
    return "; ".join(parts)


@contextmanager
def lease(
    shape: WorkerShape,
    strategy: str = "SPREAD",
    workers_per_bundle: int = 1,
    request_id: str | None = None,
) -> Iterator[WorkerGroup]:
    """A worker group of this shape from the cluster's pool: a healthy warm one when the pool
    has one idle, else a new one.

    Idle groups of other shapes (or other drivers' runtime environments) give way to it. When
    other leases, of this process or any other driver, hold the workers it needs, the fit
    queues until they give them back, without a deadline; otherwise it fails after
    ``SHARDTRAIN_PLACEMENT_TIMEOUT_S`` with a ``ScalingConfigError``. The lease is renewed in
    the background: if this process dies, the pool kills the group after
    ``SHARDTRAIN_WORKER_LEASE_TIMEOUT_S``.

    A fit still queued after ``WAIT_LOG_AFTER_S`` logs once whose workers it waits for (their
    runs' request ids, drivers, how many), and again when it gets its own.

    Args:
        request_id: the run the workers are for: recorded with the lease, so that a fit
            waiting for them can say whose they are.
    """
    key = (shape, strategy, workers_per_bundle)
    lease_id = uuid.uuid4().hex
    timeout = env.PLACEMENT_TIMEOUT_S.get()
    lease_timeout = env.WORKER_LEASE_TIMEOUT_S.get()
    began = time.monotonic()
    deadline = began + timeout
    queued = False
    said_waiting = False
    try:
        while True:
            if queued:
                wait = QUEUE_TRY_S
                if not said_waiting:  # wake up when it is time to say so
                    wait = min(wait, max(began + WAIT_LOG_AFTER_S - time.monotonic(), 0.05))
            else:
                wait = min(PLACEMENT_TRY_S, max(deadline - time.monotonic(), 0))
            pool, reply = worker_pool.acquire(lease_id, key, wait, lease_timeout, request_id)
            if reply["granted"]:
                break
            elsewhere = worker_pool.others_give_way(lease_id)
            busy = reply["others_busy"] + elsewhere
            queued = busy > 0
            if queued:  # behind other fits: no deadline while they run
                deadline = time.monotonic() + timeout
                if not said_waiting and time.monotonic() - began >= WAIT_LOG_AFTER_S:
                    said_waiting = True
                    logger.info(
                        "Waiting for workers: %s needs %d worker(s) that other fits hold: %s; "
                        "it queues until they are given back (no deadline while they run)",
                        _run_name(request_id),
                        shape.num_workers,
                        _holders_text(reply, elsewhere),
                    )
            elif time.monotonic() >= deadline:
                raise _placement_error(shape, workers_per_bundle, timeout)
    except BaseException:
        worker_pool.cancel(lease_id)
        worker_pool.drop(lease_id)
        raise
    if said_waiting:
        logger.info(
            "Workers came: %s got its %d worker(s) after waiting %.1f s for other fits",
            _run_name(request_id),
            shape.num_workers,
            time.monotonic() - began,
        )
    group = WorkerGroup(shape, strategy, workers_per_bundle, reply, pool, lease_id)
    with _lock:
        _busy.append(group)
    try:
        yield group
    finally:
        with _lock:
            if group in _busy:
                _busy.remove(group)
        try:
            if group.alive:
                _give_back(group, pool, lease_id)
        finally:
            worker_pool.drop(lease_id)


def _give_back(group: WorkerGroup, pool: Any, lease_id: str) -> None:
    import ray

    try:
        kept = ray.get(
            pool.release.remote(lease_id, env.WORKER_IDLE_S.get()),
            timeout=worker_pool.CALL_TIMEOUT_S,
        )
    except Exception:  # the pool is gone, and its actors with it
        kept = False
    group.alive = bool(kept)


def shutdown_workers(include_busy: bool = True) -> int:
    """Kill the idle worker groups in the cluster's pools and, unless ``include_busy=False``,
    the ones this process has leased (never another driver's running groups)."""
    import ray

    if not ray.is_initialized():
        return 0
    with _lock:
        mine = list(_busy) if include_busy else []
    killed = worker_pool.shutdown_all(include_busy)
    for group in mine:
        group.alive = False
    return killed


def idle_groups() -> list[dict[str, Any]]:
    """The idle groups of this driver's pool, as the pool describes them (pids, shape, ...)."""
    import ray

    if not ray.is_initialized():
        return []
    groups = ray.get(worker_pool.pool().describe.remote(), timeout=worker_pool.CALL_TIMEOUT_S)
    return [g for g in groups if g.get("state") == "idle"]
