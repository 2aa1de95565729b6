"""A worker host that vanishes: Ray raises ``ActorUnavailableError`` (not ``ActorDiedError``)
for an actor on a host it has not declared dead yet. Every place the runtime talks to an actor
while a fit leases or runs its group must treat it as a worker death (``WorkerDiedError``: the
run restarts from its latest checkpoint), never let it escape as a bare Ray error.

Ray is faked here (its exception classes are real; ``ray.get`` / ``ray.wait`` and the actor
handles are in-process stand-ins). The same fault on real hosts is exercised on the
network-namespace rig: tests/system/rig/test_rig.py.
"""

from __future__ import annotations

import importlib

import pytest
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

from shardtrain.config import FailureConfig
from shardtrain.errors import WorkerDiedError
from shardtrain.runtime import worker_group, worker_pool
from shardtrain.runtime.resources import WorkerShape
from shardtrain.runtime.run import Run, RunPlan
from shardtrain.runtime.worker_pool import WorkerPool

KEY = (WorkerShape(2, 1.0, 0.0), "SPREAD", 1)


def unavailable(what: str = "node 198.18.0.12 is unreachable") -> ActorUnavailableError:
    return ActorUnavailableError(what, None)


def died() -> ActorDiedError:
    return ActorDiedError()


def raised_by_actor(cause: BaseException) -> RayTaskError:
    """What ``ray.get`` raises when an actor's method raised ``cause``."""
    error = RayTaskError("WorkerPool.acquire", "Traceback: ...", cause, "pool", 1, "198.18.0.2")
    return error.as_instanceof_cause()


def owner(token="driver-a"):
    return {"token": token, "pid": 1, "host": "h", "job_id": "01", "request_id": "run-a"}


# -- fake Ray ------------------------------------------------------------------------------------


class Ref:
    """An ObjectRef stand-in: ready or not, a value or an error."""

    def __init__(self, value=None, error: BaseException | None = None, ready: bool = True):
        self.value, self.error, self.ready = value, error, ready


def fake_get(ref, timeout=None):
    if isinstance(ref, list):
        return [fake_get(r) for r in ref]
    if ref.error is not None:
        raise ref.error
    return ref.value


def fake_wait(refs, num_returns=1, timeout=None):
    return [r for r in refs if r.ready], [r for r in refs if not r.ready]


class Method:
    def __init__(self, answer) -> None:
        self.answer, self.calls = answer, 0

    def remote(self, *args, **kwargs):
        self.calls += 1
        answer = self.answer(*args) if callable(self.answer) else self.answer
        return answer if isinstance(answer, Ref) else Ref(answer)


@pytest.fixture
def fake_ray(monkeypatch):
    monkeypatch.setattr(ray, "get", fake_get)
    monkeypatch.setattr(ray, "wait", fake_wait)


# -- the pool: a rank lost as its group starts ----------------------------------------------------


class StartingPool(WorkerPool):
    """A pool (the real ``_place``) whose ranks answer their first call
    with what ``answers`` says (a list, or an error), and whose kills go into a list."""

    def __init__(self, answers: list) -> None:
        self.answers = list(answers)
        self.killed: list[str] = []
        self.started = 0
        super().__init__()

    def _create_ranks(self, pg, key):
        self.started += 1
        return [f"actor-{self.started}-{i}" for i in range(key[0].num_workers)]

    def _rank_infos(self, workers):
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return [{"pid": 1000 + i, "ip": "198.18.0.11"} for i in range(len(workers))]

    def _kill(self, groups):
        self.killed += [g.id for g in groups]


class ReadyPG:
    """A placement group placed at once."""

    def wait(self, timeout_seconds):
        return True


@pytest.fixture
def starting_pool(monkeypatch):
    pg_module = importlib.import_module("ray.util.placement_group")
    monkeypatch.setattr(pg_module, "placement_group", lambda bundles, strategy: ReadyPG())
    monkeypatch.setattr(worker_pool, "_pending_demand", lambda: False)
    monkeypatch.setattr(worker_pool, "_remove_pg", lambda pg: None)
    pools = []

    def make(answers):
        pools.append(StartingPool(answers))
        return pools[-1]

    yield make
    for pool in pools:  # its sweeper thread lives on: leave it nothing to do
        with pool._lock:
            pool._groups.clear()
            pool._pending.clear()


@pytest.mark.parametrize("lost", [unavailable(), died()], ids=["unavailable", "died"])
def test_a_rank_lost_as_its_group_starts_is_no_grant_and_the_next_try_places_anew(
    starting_pool, lost, caplog
):
    pool = starting_pool([lost, "ok"])
    caplog.set_level("WARNING", logger="shardtrain.runtime")
    first = pool.acquire("L1", owner(), KEY, 1.0, 30.0)
    assert first["granted"] is False and first["others_busy"] == 0
    assert len(pool.killed) == 1 and pool.describe() == []  # nothing half-started is kept
    assert f"a worker of a new group was lost as it started ({type(lost).__name__}" in (caplog.text)
    second = pool.acquire("L1", owner(), KEY, 1.0, 30.0)
    assert second["granted"] is True and pool.started == 2
    assert [g["state"] for g in pool.describe()] == ["busy"]


def test_any_other_error_as_a_group_starts_still_propagates(starting_pool):
    pool = starting_pool([ValueError("bad actor class")])
    with pytest.raises(ValueError, match="bad actor class"):
        pool.acquire("L1", owner(), KEY, 1.0, 30.0)
    assert len(pool.killed) == 1


# -- the driver asking the pool --------------------------------------------------------------------


class FakeHandle:
    """The pool's actor handle: ``acquire`` answers from ``answers`` (errors are raised)."""

    def __init__(self, answers: list) -> None:
        self.answers = answers
        self.acquire = Method(lambda *args: self._next())

    def _next(self):
        answer = self.answers.pop(0)
        return Ref(error=answer) if isinstance(answer, BaseException) else Ref(answer)


@pytest.fixture
def driver(monkeypatch, fake_ray):
    handles: list[FakeHandle] = []
    refreshed: list[bool] = []

    def install(answers: list) -> list[bool]:
        handle = FakeHandle(answers)
        handles.append(handle)

        def pool(refresh=False):
            refreshed.append(refresh)
            return handle

        monkeypatch.setattr(worker_pool, "pool", pool)
        return refreshed

    monkeypatch.setattr(worker_pool, "hold", lambda lease, handle, timeout: None)
    monkeypatch.setattr(worker_pool, "owner", lambda request_id=None: owner())
    monkeypatch.setattr(worker_pool, "POOL_RETRY_S", 0.0)
    return install


GRANT = {"granted": True, "id": "g1", "workers": [], "infos": []}


def test_a_pool_whose_host_does_not_answer_is_asked_again_until_it_does(driver):
    refreshed = driver([unavailable(), unavailable(), GRANT])
    _, reply = worker_pool.acquire("L1", KEY, 1.0, 30.0)
    assert reply == GRANT
    assert refreshed == [False, True, True]


def test_a_pool_that_died_is_replaced(driver):
    refreshed = driver([died(), GRANT])
    assert worker_pool.acquire("L1", KEY, 1.0, 30.0)[1] == GRANT
    assert refreshed == [False, True]


def test_a_pool_unreachable_past_the_bound_is_a_worker_death(driver, monkeypatch):
    monkeypatch.setattr(worker_pool, "POOL_LOST_WAIT_S", 0.0)
    driver([unavailable(), GRANT])
    with pytest.raises(WorkerDiedError) as caught:
        worker_pool.acquire("L1", KEY, 1.0, 30.0)
    assert str(caught.value).startswith(
        "the cluster's worker pool was lost (ActorUnavailableError: The actor"
    )
    assert "198.18.0.12 is unreachable" in str(caught.value)


@pytest.mark.parametrize("lost", [unavailable(), died()], ids=["unavailable", "died"])
def test_a_worker_the_pool_lost_while_answering_is_a_worker_death(driver, lost):
    refreshed = driver([raised_by_actor(lost), GRANT])
    with pytest.raises(WorkerDiedError, match="a worker the pool was starting was lost"):
        worker_pool.acquire("L1", KEY, 1.0, 30.0)
    assert refreshed == [False]  # the pool answered: it is not replaced


def test_any_other_error_of_the_pool_propagates_as_it_is(driver):
    driver([raised_by_actor(ValueError("bad key"))])
    with pytest.raises(ValueError) as caught:
        worker_pool.acquire("L1", KEY, 1.0, 30.0)
    assert str(caught.value.cause) == "bad key"


# -- the driver running the group ------------------------------------------------------------------


class FakeRank:
    """A rank actor: ``run`` never finishes unless ``result`` says; ``poll`` answers ``poll``."""

    def __init__(self, poll, result: Ref | None = None) -> None:
        self.run = Method(result or Ref(ready=False))
        self.poll = Method(poll)
        self.poll_logs = Method([])


class FakePoolHandle:
    def __init__(self) -> None:
        self.discarded: list[str] = []
        self.discard = Method(lambda lease: self.discarded.append(lease) or True)


def group_of(ranks) -> tuple[worker_group.WorkerGroup, FakePoolHandle]:
    handle = FakePoolHandle()
    grant = {"id": "g1", "workers": ranks, "infos": [{} for _ in ranks]}
    group = worker_group.WorkerGroup(KEY[0], "SPREAD", 1, grant, handle, "L1")
    return group, handle


def test_rank_0_s_host_lost_during_a_progress_poll_is_rank_0_s_death(fake_ray, monkeypatch):
    monkeypatch.setattr(worker_group, "DEATH_GRACE_S", 0.0)
    group, handle = group_of([FakeRank(Ref(error=unavailable())), FakeRank(([], None))])
    with pytest.raises(WorkerDiedError) as caught:
        group.run(lambda reporter: None, [{}, {}], on_progress=lambda events, snap: None)
    assert caught.value.rank == 0
    assert str(caught.value).startswith("worker rank 0 died (ActorUnavailableError: The actor")
    assert handle.discarded == ["L1"] and not group.alive  # peers never left in a collective


def test_a_rank_failure_seen_during_the_grace_names_the_root_cause(fake_ray):
    rank1_result = Ref(error=died(), ready=False)

    def rank0_poll(*args):  # the poll fails as rank 1's death arrives
        rank1_result.ready = True
        return Ref(error=unavailable())

    group, _ = group_of([FakeRank(rank0_poll), FakeRank(None, result=rank1_result)])
    with pytest.raises(WorkerDiedError) as caught:
        group.run(lambda reporter: None, [{}, {}], on_progress=lambda events, snap: None)
    assert caught.value.rank == 1


def test_a_rank_s_death_names_its_node(fake_ray, monkeypatch):
    monkeypatch.setattr(worker_group, "DEATH_GRACE_S", 0.0)
    group, _ = group_of([FakeRank(Ref(error=unavailable())), FakeRank(([], None))])
    group.infos = [{"ip": "198.18.29.11"}, {"ip": "198.18.29.12"}]
    with pytest.raises(WorkerDiedError) as caught:
        group.run(lambda reporter: None, [{}, {}], on_progress=lambda events, snap: None)
    assert str(caught.value).startswith(
        "worker rank 0 died on node 198.18.29.11 (ActorUnavailableError: The actor"
    )
    assert caught.value.host == "198.18.29.11"


def test_a_rank_whose_host_vanished_is_a_death_not_a_task_error(fake_ray):
    error = worker_group.WorkerGroup._error(Ref(error=unavailable()), rank=1)
    assert isinstance(error, WorkerDiedError) and error.rank == 1
    assert "ActorUnavailableError" in str(error)


# -- the run engine restarts on it -----------------------------------------------------------------


def test_the_run_restarts_after_a_host_is_lost_while_leasing(fake_ray, tmp_path, driver):
    driver([raised_by_actor(unavailable()), GRANT])
    run = Run(RunPlan.open(str(tmp_path), None), FailureConfig(max_failures=1), "round")
    tries = []

    def attempt(start):
        tries.append(start.step)
        return worker_pool.acquire("L1", KEY, 1.0, 30.0)[1]

    assert run.execute(attempt) == GRANT
    assert tries == [0, 0]
