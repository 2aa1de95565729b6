"""The cluster's warm pool of worker groups: a detached actor that outlives the drivers.

Every Airflow task, Prefect task run and Ray Job is a new driver process. A pool inside the
driver dies with it, so each fit would pay Ray worker start-up and ``import xgboost`` (~2 s).
This pool is a named detached actor (namespace ``shardtrain``, no CPU) that places the
placement groups and creates the rank actors itself: they are its own, live while it does,
and nothing leaks when a driver dies.

One pool per runtime environment. Ray merges an actor's runtime_env with its creator's, so
actors a pool creates carry the pool's environment variables; a pool named after the hash of
the driver's runtime_env (and created with it) creates actors as that driver would have.
Within a pool, groups are keyed by shape, placement strategy and workers per bundle.

Leases: ``acquire`` lends one lease a healthy idle group of its key, else places a new one
(idle groups give way when resources are short). The driver renews its leases every
``LEASE_RENEW_S`` from a daemon thread; the pool kills a group whose lease went unrenewed for
the lease timeout (``SHARDTRAIN_WORKER_LEASE_TIMEOUT_S``: its driver died, perhaps while the
ranks were in a collective), and an idle group past the idle time its last driver gave
(``SHARDTRAIN_WORKER_IDLE_S``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from shardtrain.errors import WorkerDiedError
from shardtrain.runtime.train_worker import actor_class

logger = logging.getLogger("shardtrain.runtime")

POOL_NAMESPACE = "shardtrain"
#: A pool's actor name is this prefix and the hash of its runtime_env.
POOL_PREFIX = "shardtrain-worker-pool"
#: Threads of the pool actor: every queued or placing lease holds one while it waits.
POOL_MAX_CONCURRENCY = 100
#: How often a driver renews its leases (at most; a short lease timeout renews faster).
LEASE_RENEW_S = 2.0
#: How often the pool looks for expired leases and idle groups past their time.
SWEEP_INTERVAL_S = 0.5
#: How long a warm group's actors have to answer before the group counts as dead.
HEALTH_TIMEOUT_S = 10.0
#: A new group waits this long for free resources before idle groups give way to it.
GIVE_WAY_AFTER_S = 0.2
#: How often the pool asks Ray whether other work waits for resources (idle groups give way).
DEMAND_CHECK_S = 2.0
#: Seconds a driver waits on the pool for a renewal, release or shutdown answer.
CALL_TIMEOUT_S = 30.0
#: How long a driver keeps asking a pool whose host does not answer, or replacing one that
#: died, before the lease fails as a lost worker (Ray declares a vanished node dead within
#: about 30 s with its default health checks).
POOL_LOST_WAIT_S = 60.0
#: Pause between two asks of a pool whose host does not answer.
POOL_RETRY_S = 1.0

#: This process, as the owner of its leases (``shutdown_workers`` ends this process's only).
PROCESS_TOKEN = uuid.uuid4().hex


def _key_text(key: tuple) -> dict[str, Any]:
    shape, strategy, per_bundle = key
    return {
        "num_workers": shape.num_workers,
        "cpus": shape.cpus,
        "gpus": shape.gpus,
        "strategy": strategy,
        "workers_per_bundle": per_bundle,
    }


@dataclass
class _Group:
    """One placement group and its rank actors, as the pool tracks it."""

    id: str
    key: tuple
    pg: Any
    workers: list[Any]
    infos: list[dict[str, Any]]
    state: str = "busy"  # or "idle"
    lease: str | None = None
    owner: dict[str, Any] = field(default_factory=dict)
    lease_timeout_s: float = 0.0
    expires: float = 0.0  # busy: killed when the lease is not renewed by then
    idle_until: float = 0.0  # idle: killed then
    since: float = field(default_factory=time.monotonic)  # of the current state
    fits: int = 0


class WorkerPool:
    """The detached pool actor (threaded: queued leases wait in their own calls)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}
        self._placing: dict[str, str] = {}  # lease -> owner token, while its group is placed
        # A lease's placement group that was not ready when its try ended: the next try of the
        # same lease waits on it again instead of removing it and asking anew (a removed
        # group that was about to be placed could leave its bundles reserved under load).
        # lease -> (placement group, key, lease timeout, expiry unless renewed)
        self._pending: dict[str, tuple[Any, tuple, float, float]] = {}
        self._demand_checked = 0.0
        threading.Thread(target=self._sweeper, name="sweeper", daemon=True).start()

    # -- leases ------------------------------------------------------------------------------

    def acquire(
        self, lease: str, owner: dict[str, Any], key: tuple, wait_s: float, lease_timeout_s: float
    ) -> dict[str, Any]:
        """A group of ``key`` for ``lease``: ``{"granted": True, workers, infos, id}``, or
        ``{"granted": False, "others_busy": n, "holders": [...]}`` when none could be placed
        within ``wait_s`` (``holders``: the other leases' busy groups, see ``_holders``)."""
        while True:
            with self._lock:
                group = next(
                    (g for g in self._groups.values() if g.state == "idle" and g.key == key), None
                )
                if group is not None:
                    self._lend(group, lease, owner, lease_timeout_s)
            if group is None:
                break
            if self._healthy(group):
                self.cancel(lease)  # a placement group asked for on an earlier try
                return self._grant(group)
            logger.info("a warm worker group has a dead worker; starting a new one")
            with self._lock:
                self._groups.pop(group.id, None)
            self._kill([group])
        with self._lock:
            self._placing[lease] = owner["token"]
        try:
            group = self._place(lease, key, wait_s, lease_timeout_s)
            with self._lock:
                if group is None:
                    return {
                        "granted": False,
                        "others_busy": self._others(lease),
                        "holders": self._holders(lease),
                    }
                self._groups[group.id] = group
                self._lend(group, lease, owner, lease_timeout_s)
            return self._grant(group)
        finally:
            with self._lock:
                self._placing.pop(lease, None)

    def renew(self, leases: list[str]) -> list[str]:
        """Extend these leases; returns the ones the pool no longer has (expired, killed)."""
        now = time.monotonic()
        with self._lock:
            held = {g.lease: g for g in self._groups.values() if g.state == "busy"}
            for lease in leases:
                if lease in held:
                    held[lease].expires = now + held[lease].lease_timeout_s
                if lease in self._pending:
                    pg, key, timeout_s, _ = self._pending[lease]
                    self._pending[lease] = (pg, key, timeout_s, now + timeout_s)
            return [
                x
                for x in leases
                if x not in held and x not in self._placing and x not in self._pending
            ]

    def release(self, lease: str, idle_s: float) -> bool:
        """The lease's group goes back to idle for ``idle_s`` seconds (False: it is gone)."""
        with self._lock:
            group = self._leased(lease)
            if group is None:
                return False
            if idle_s <= 0:
                self._groups.pop(group.id)
            else:
                group.state, group.lease, group.owner = "idle", None, {}
                group.since, group.idle_until = time.monotonic(), time.monotonic() + idle_s
                return True
        self._kill([group])
        return True

    def discard(self, lease: str) -> bool:
        """Kill the lease's group (a rank failed: its peers may hang in a collective)."""
        with self._lock:
            group = self._leased(lease)
            if group is not None:
                self._groups.pop(group.id)
        if group is not None:
            self._kill([group])
        return group is not None

    def give_way(self, lease: str) -> int:
        """Kill the idle groups (a lease of another pool needs their resources); returns how
        many other leases are busy or placing here."""
        self._drop_idle()
        with self._lock:
            return self._others(lease)

    def shutdown(self, owner_token: str | None, include_busy: bool) -> int:
        """Kill the idle groups and, with ``include_busy``, the busy ones of that owner."""
        with self._lock:
            doomed = [
                g
                for g in self._groups.values()
                if g.state == "idle"
                or (include_busy and owner_token and g.owner.get("token") == owner_token)
            ]
            for group in doomed:
                self._groups.pop(group.id)
        self._kill(doomed)
        return len(doomed)

    def describe(self) -> list[dict[str, Any]]:
        """Every group: key, state, pids, owner, times (for ``shardtrain cluster status``)."""
        now = time.monotonic()
        with self._lock:
            return [
                {
                    "id": g.id,
                    **_key_text(g.key),
                    "state": g.state,
                    "pids": [i["pid"] for i in g.infos],
                    "nodes": [i["ip"] for i in g.infos],
                    "owner": {k: v for k, v in g.owner.items() if k != "token"},
                    "for_s": round(now - g.since, 1),
                    "stops_in_s": round(g.idle_until - now, 1) if g.state == "idle" else None,
                    "fits": g.fits,
                }
                for g in self._groups.values()
            ] + [{"id": None, "state": "placing", "lease": lease} for lease in self._placing]

    # -- inside the pool -----------------------------------------------------------------------

    def _lend(self, group: _Group, lease: str, owner: dict[str, Any], timeout_s: float) -> None:
        group.state, group.lease, group.owner = "busy", lease, dict(owner)
        group.lease_timeout_s, group.since = timeout_s, time.monotonic()
        group.expires = time.monotonic() + timeout_s
        group.fits += 1

    @staticmethod
    def _grant(group: _Group) -> dict[str, Any]:
        return {"granted": True, "id": group.id, "workers": group.workers, "infos": group.infos}

    def _leased(self, lease: str) -> _Group | None:
        return next((g for g in self._groups.values() if g.lease == lease), None)

    def _others(self, lease: str) -> int:
        busy = sum(1 for g in self._groups.values() if g.state == "busy" and g.lease != lease)
        return busy + sum(1 for x in self._placing if x != lease)

    def _holders(self, lease: str) -> list[dict[str, Any]]:
        """Who holds this pool's busy groups other than ``lease`` (call under the lock): the
        run's request id (None when the fit was given none), its driver, how many workers,
        and for how long; what a queued fit logs while it waits."""
        now = time.monotonic()
        return [
            {
                "request_id": g.owner.get("request_id"),
                "pid": g.owner.get("pid"),
                "host": g.owner.get("host"),
                "workers": len(g.workers),
                "for_s": round(now - g.since, 1),
            }
            for g in self._groups.values()
            if g.state == "busy" and g.lease != lease
        ]

    @staticmethod
    def _healthy(group: _Group) -> bool:
        import ray

        try:
            ray.get([w.info.remote() for w in group.workers], timeout=HEALTH_TIMEOUT_S)
        except Exception:  # dead actor, lost node, no answer in time
            return False
        return True

    def cancel(self, lease: str) -> bool:
        """The lease gave up waiting: remove its pending placement group."""
        with self._lock:
            pending = self._pending.pop(lease, None)
        if pending is not None:
            _remove_pg(pending[0])
        return pending is not None

    def _place(
        self, lease: str, key: tuple, wait_s: float, lease_timeout_s: float
    ) -> _Group | None:
        """A new group, or None when its placement group is not ready within ``wait_s`` (it
        stays pending for the lease's next try)."""
        from ray.exceptions import RayActorError
        from ray.util.placement_group import placement_group

        shape, strategy, per_bundle = key
        with self._lock:
            pending = self._pending.pop(lease, None)
        if pending is not None and pending[1] == key:
            pg = pending[0]
        else:
            if pending is not None:
                _remove_pg(pending[0])
            bundle = {"CPU": shape.cpus * per_bundle}
            if shape.gpus:
                bundle["GPU"] = shape.gpus * per_bundle
            pg = placement_group(
                [dict(bundle) for _ in range(shape.num_workers // per_bundle)], strategy=strategy
            )
        ready = pg.wait(timeout_seconds=min(GIVE_WAY_AFTER_S, wait_s))
        if not ready:
            self._drop_idle()  # idle groups give way to a lease that needs their room
            ready = pg.wait(timeout_seconds=max(wait_s - GIVE_WAY_AFTER_S, 0))
        if not ready:
            with self._lock:
                expires = time.monotonic() + lease_timeout_s
                self._pending[lease] = (pg, key, lease_timeout_s, expires)
            return None
        group = _Group(uuid.uuid4().hex[:12], key, pg, self._create_ranks(pg, key), [])
        try:
            group.infos = self._rank_infos(group.workers)
        except RayActorError as exc:
            # A rank died as it started, or its host vanished (``ActorUnavailableError``: Ray
            # has not declared the node dead yet). Not an error of this lease: no group now,
            # and the lease tries again (a new placement group, placed on the hosts alive)
            # until its placement timeout.
            self._kill([group])
            logger.warning(
                "a worker of a new group was lost as it started (%s: %s); placing another",
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            return None
        except BaseException:
            self._kill([group])
            raise
        return group

    @staticmethod
    def _create_ranks(pg, key: tuple) -> list[Any]:
        """One rank actor per worker of ``key``, in the placement group's bundles."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        shape, _, per_bundle = key
        return [
            actor_class()
            .options(
                num_cpus=shape.cpus,
                num_gpus=shape.gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i // per_bundle),
            )
            .remote(i)
            for i in range(shape.num_workers)
        ]

    @staticmethod
    def _rank_infos(workers: list[Any]) -> list[dict[str, Any]]:
        """Each rank's pid and node (its first answer: the rank started)."""
        import ray

        return ray.get([w.info.remote() for w in workers])

    def _drop_idle(self) -> int:
        with self._lock:
            idle = [g for g in self._groups.values() if g.state == "idle"]
            for group in idle:
                self._groups.pop(group.id)
        self._kill(idle)
        return len(idle)

    @staticmethod
    def _kill(groups: list[_Group]) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for group in groups:
            for worker in group.workers:
                try:
                    ray.kill(worker, no_restart=True)
                except Exception:  # already dead
                    pass
            try:
                remove_placement_group(group.pg)
            except Exception:
                pass

    def _sweeper(self) -> None:
        """Kill expired leases' groups (their driver is gone) and idle groups past their time."""
        while True:
            time.sleep(SWEEP_INTERVAL_S)
            now = time.monotonic()
            with self._lock:
                doomed = [
                    g
                    for g in self._groups.values()
                    if (g.state == "idle" and now >= g.idle_until)
                    or (g.state == "busy" and now >= g.expires)
                ]
                for group in doomed:
                    self._groups.pop(group.id)
                lapsed = [x for x, (*_, expires) in self._pending.items() if now >= expires]
                lapsed_pgs = [self._pending.pop(x)[0] for x in lapsed]
            for pg in lapsed_pgs:  # their driver stopped asking (it died while queued)
                _remove_pg(pg)
            for group in doomed:
                if group.state == "busy":
                    logger.warning(
                        "lease of worker group %s (driver %s) not renewed for %.0f s: killing it",
                        group.id,
                        group.owner,
                        group.lease_timeout_s,
                    )
            try:
                self._kill(doomed)
                self._give_way_to_pending_work()
            except Exception:  # never let the sweeper die
                logger.exception("killing worker groups failed")

    def _give_way_to_pending_work(self) -> None:
        """Idle groups hold CPUs (and GPUs) for drivers to come; when other Ray work (a plain
        task, an actor, a job's entrypoint, another library's placement group) waits for
        resources, it gets them now instead of after the idle time."""
        now = time.monotonic()
        if now - self._demand_checked < DEMAND_CHECK_S:
            return
        self._demand_checked = now
        with self._lock:
            if (
                self._placing
                or self._pending
                or not any(g.state == "idle" for g in self._groups.values())
            ):
                return  # a placing lease's own demand is not someone else's
        if _pending_demand():
            dropped = self._drop_idle()
            if dropped:
                logger.info("%d idle worker group(s) gave way to pending Ray work", dropped)


def _remove_pg(pg) -> None:
    from ray.util.placement_group import remove_placement_group

    try:
        remove_placement_group(pg)
    except Exception:  # already removed
        pass


def _pending_demand() -> bool:
    """Whether the cluster has tasks, actors or placement groups waiting for resources (Ray's
    autoscaler state, refreshed by the raylets about every second)."""
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    demands = get_cluster_status(ray.get_runtime_context().gcs_address).resource_demands
    return any(
        request.count > 0
        for demand in (*demands.ray_task_actor_demand, *demands.placement_group_demand)
        for request in demand.bundles_by_count
    )


# -- the driver's side -------------------------------------------------------------------------

_handles: dict[tuple[str, str], Any] = {}  # (this driver's job id, pool name) -> handle
_leases: dict[str, tuple[Any, float]] = {}  # lease -> (pool handle, lease timeout)
_leases_lock = threading.Lock()
_renewer: threading.Thread | None = None


def _job_id() -> str:
    import ray

    return ray.get_runtime_context().get_job_id()


def runtime_env_hash() -> str:
    """Hash of this driver's runtime_env: which pool creates its workers."""
    import ray

    runtime_env = ray.get_runtime_context().runtime_env or {}
    text = json.dumps(dict(runtime_env), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pool_name() -> str:
    return f"{POOL_PREFIX}-{runtime_env_hash()}"


def owner(request_id: str | None = None) -> dict[str, Any]:
    """This driver, as the pool records a lease's owner (``request_id``: the run the lease is
    for, what another fit waiting for these workers names)."""
    return {
        "token": PROCESS_TOKEN,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "job_id": _job_id(),
        "request_id": request_id,
    }


def pool(refresh: bool = False):
    """The handle of this driver's pool, created (detached) when none runs."""
    import ray

    key = (_job_id(), pool_name())
    if refresh:
        _handles.pop(key, None)
    handle = _handles.get(key)
    if handle is None and not refresh:
        # The pool usually runs: look it up by name (no actor class exported by this driver).
        try:
            handle = ray.get_actor(key[1], namespace=POOL_NAMESPACE)
        except ValueError:  # none yet
            handle = None
    if handle is None:
        handle = (
            ray.remote(WorkerPool)
            .options(
                name=key[1],
                namespace=POOL_NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                max_concurrency=POOL_MAX_CONCURRENCY,
            )
            .remote()
        )
    _handles[key] = handle
    return handle


def acquire(
    lease: str, key: tuple, wait_s: float, lease_timeout_s: float, request_id: str | None = None
):
    """(pool handle, the pool's answer).

    A pool that died (killed by hand, or with its host) is replaced; one whose host does not
    answer (``ActorUnavailableError``: the host vanished and Ray has not declared it dead yet)
    is asked again every ``POOL_RETRY_S`` until it answers or is declared dead, for at most
    ``POOL_LOST_WAIT_S``. A worker the pool lost while it answered (an older pool raises that)
    and a pool lost for longer are a ``WorkerDiedError``: the run restarts from its latest
    checkpoint within ``FailureConfig.max_failures``, never a bare Ray error.
    """
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

    handle = pool()
    hold(lease, handle, lease_timeout_s)
    me = owner(request_id)
    deadline = time.monotonic() + POOL_LOST_WAIT_S
    replaced = False
    while True:
        try:
            reply = ray.get(handle.acquire.remote(lease, me, key, wait_s, lease_timeout_s))
            return handle, reply
        except RayTaskError as exc:  # the pool answered with an error of its own
            if isinstance(exc, RayActorError):  # a worker it started was lost
                raise _lost("a worker the pool was starting", exc) from exc
            raise
        except ActorUnavailableError as exc:  # the pool's host does not answer
            if time.monotonic() >= deadline:
                raise _lost("the cluster's worker pool", exc) from exc
            logger.info("the worker pool does not answer (its host is unreachable); asking again")
            time.sleep(POOL_RETRY_S)
        except RayActorError as exc:  # the pool died: start another
            if time.monotonic() >= deadline:
                raise _lost("the cluster's worker pool", exc) from exc
            logger.info("the worker pool died (%s); starting another", type(exc).__name__)
            if replaced:  # the new one died too: not in a tight loop
                time.sleep(POOL_RETRY_S)
            replaced = True
        handle = pool(refresh=True)
        hold(lease, handle, lease_timeout_s)


def _lost(what: str, exc: BaseException) -> WorkerDiedError:
    """A Ray actor failure while a group was being leased, as the error a run restarts on."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return WorkerDiedError(
        f"{what} was lost ({type(exc).__name__}: {first}).", worker_traceback=str(exc)
    )


def all_pools() -> list[tuple[str, Any]]:
    """(name, handle) of every pool on the cluster (one per runtime_env in use)."""
    import ray

    found = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") == POOL_NAMESPACE and entry["name"].startswith(POOL_PREFIX):
            try:
                found.append(
                    (entry["name"], ray.get_actor(entry["name"], namespace=POOL_NAMESPACE))
                )
            except ValueError:  # gone since it was listed
                pass
    return found


def others_give_way(lease: str) -> int:
    """Other pools kill their idle groups; returns how many leases they have busy."""
    import ray

    own_name = pool_name()
    refs = [h.give_way.remote(lease) for name, h in all_pools() if name != own_name]
    busy = 0
    for ref in refs:
        try:
            busy += ray.get(ref, timeout=CALL_TIMEOUT_S)
        except Exception:  # a pool that died or does not answer holds nothing we can free
            pass
    return busy


def shutdown_all(include_busy: bool) -> int:
    """Every pool kills its idle groups, and this process's busy ones with ``include_busy``."""
    import ray

    refs = [h.shutdown.remote(PROCESS_TOKEN, include_busy) for _, h in all_pools()]
    killed = 0
    for ref in refs:
        try:
            killed += ray.get(ref, timeout=CALL_TIMEOUT_S)
        except Exception:
            pass
    return killed


def describe_all() -> dict[str, list[dict[str, Any]]]:
    """Every pool's groups, by pool name."""
    import ray

    pools = all_pools()
    refs = [h.describe.remote() for _, h in pools]
    out = {}
    for (name, _), ref in zip(pools, refs, strict=True):
        try:
            out[name] = ray.get(ref, timeout=CALL_TIMEOUT_S)
        except Exception as exc:
            out[name] = [{"error": f"{type(exc).__name__}: {exc}"}]
    return out


# -- lease renewal -------------------------------------------------------------------------------


def hold(lease: str, handle, lease_timeout_s: float) -> None:
    """Renew ``lease`` from the renewal thread until ``drop(lease)``."""
    global _renewer
    with _leases_lock:
        _leases[lease] = (handle, lease_timeout_s)
        if _renewer is None:
            _renewer = threading.Thread(
                target=_renew_forever, name="shardtrain-leases", daemon=True
            )
            _renewer.start()


def drop(lease: str) -> None:
    with _leases_lock:
        _leases.pop(lease, None)


def cancel(lease: str) -> None:
    """The lease gives up: its pool removes the placement group it may still have pending."""
    import ray

    with _leases_lock:
        held = _leases.get(lease)
    if held is None:
        return
    try:
        ray.get(held[0].cancel.remote(lease), timeout=CALL_TIMEOUT_S)
    except Exception:  # the pool is gone, or Ray is: its sweeper drops it otherwise
        pass


def renew_interval(lease_timeout_s: float) -> float:
    """Renew often enough that one late renewal does not lose the lease."""
    return max(0.1, min(LEASE_RENEW_S, lease_timeout_s / 4))


def _renew_forever() -> None:
    """Send every pool its held leases (no waiting for the answer), until none is held.

    Ray is touched only under the lock and while a lease is held: a lease is dropped before
    its process can exit, so this thread never calls into a Ray that has shut down."""
    global _renewer
    while True:
        with _leases_lock:
            if not _leases:
                _renewer = None
                return
            interval = min(renew_interval(t) for _, t in _leases.values())
            by_pool: dict[int, tuple[Any, list[str]]] = {}
            for lease, (handle, _) in _leases.items():
                by_pool.setdefault(id(handle), (handle, []))[1].append(lease)
            for handle, leases in by_pool.values():
                try:
                    handle.renew.remote(leases)
                except Exception:  # the pool is gone: the lease's fit sees its workers fail
                    pass
        time.sleep(interval)
