"""The warm pool's state machine (``runtime.worker_pool.WorkerPool``) without Ray: a pool whose
placing, health check and killing are in-process fakes (what Ray Train v2 does with its fake
worker group), so the lease rules are checked on their own, in milliseconds. The real pool,
with real actors and placement groups, is exercised by
tests/integration/core/test_worker_pool.py."""

from __future__ import annotations

import time

import pytest

from shardtrain.runtime import worker_pool
from shardtrain.runtime.resources import WorkerShape
from shardtrain.runtime.worker_pool import WorkerPool

KEY = (WorkerShape(2, 1.0, 0.0), "PACK", 1)
OTHER_KEY = (WorkerShape(1, 2.0, 0.0), "PACK", 1)


def owner(token="driver-a", request_id="run-a"):
    return {"token": token, "pid": 1, "host": "h", "job_id": "01", "request_id": request_id}


class FakePool(WorkerPool):
    """A pool whose groups are placed at once (or never, with ``room=False``), are healthy
    unless marked dead, and are 'killed' into a list."""

    def __init__(self) -> None:
        self.room = True
        self.dead: set[str] = set()
        self.killed: list[str] = []
        self.placed = 0
        super().__init__()

    def _place(self, lease, key, wait_s, lease_timeout_s):
        if not self.room:
            with self._lock:
                self._pending[lease] = ("pg", key, lease_timeout_s, time.monotonic() + 60)
            return None
        self.placed += 1
        shape = key[0]
        workers = [f"actor-{self.placed}-{i}" for i in range(shape.num_workers)]
        infos = [{"pid": 1000 * self.placed + i, "ip": "10.0.0.1"} for i in range(len(workers))]
        return worker_pool._Group(f"g{self.placed}", key, "pg", workers, infos)

    def _healthy(self, group):
        return group.id not in self.dead

    def _kill(self, groups):
        self.killed += [g.id for g in groups]


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setattr(worker_pool, "_pending_demand", lambda: False)
    monkeypatch.setattr(worker_pool, "_remove_pg", lambda pg: None)
    fake = FakePool()
    yield fake
    with fake._lock:  # its sweeper thread lives on: leave it nothing to do
        fake._groups.clear()
        fake._pending.clear()


def test_a_first_lease_places_a_new_group(pool):
    reply = pool.acquire("L1", owner(), KEY, 1.0, 30.0)
    assert reply["granted"] and reply["id"] == "g1" and len(reply["workers"]) == 2
    assert pool.describe()[0]["state"] == "busy" and pool.describe()[0]["fits"] == 1


def test_a_released_group_is_lent_again_warm(pool):
    pool.acquire("L1", owner(), KEY, 1.0, 30.0)
    assert pool.release("L1", idle_s=60)
    reply = pool.acquire("L2", owner("driver-b"), KEY, 1.0, 30.0)
    assert reply["id"] == "g1" and pool.placed == 1
    assert pool.describe()[0]["fits"] == 2


def test_a_group_of_another_key_is_not_lent(pool):
    pool.acquire("L1", owner(), KEY, 1.0, 30.0)
    pool.release("L1", idle_s=60)
    assert pool.acquire("L2", owner(), OTHER_KEY, 1.0, 30.0)["id"] == "g2"


def test_a_warm_group_with_a_dead_worker_is_killed_and_replaced(pool, caplog):
    pool.acquire("L1", owner(), KEY, 1.0, 30.0)
    pool.release("L1", idle_s=60)
    pool.dead.add("g1")
    caplog.set_level("INFO", logger="shardtrain.runtime")
    assert pool.acquire("L2", owner(), KEY, 1.0, 30.0)["id"] == "g2"
    assert pool.killed == ["g1"]
    assert "a warm worker group has a dead worker" in caplog.text


def test_release_with_no_idle_time_kills_the_group(pool):
    pool.acquire("L1", owner(), KEY, 1.0, 30.0)
    assert pool.release("L1", idle_s=0)
    assert pool.killed == ["g1"] and pool.describe() == []


def test_release_of_an_unknown_lease_says_so(pool):
    assert pool.release("nobody", idle_s=60) is False


def test_discard_kills_the_lease_s_group_not_another(pool):
    pool.acquire("L1", owner(), KEY, 1.0, 30.0)
    pool.acquire("L2", owner(), KEY, 1.0, 30.0)
    assert pool.discard("L1") and pool.killed == ["g1"]
    assert [g["id"] for g in pool.describe()] == ["g2"]
    assert pool.discard("L1") is False


def test_no_room_answers_who_holds_the_workers(pool):
    pool.acquire("L1", owner(request_id="run-a"), KEY, 1.0, 30.0)
    pool.room = False
    reply = pool.acquire("L2", owner("driver-b", "run-b"), KEY, 0.0, 30.0)
    assert reply["granted"] is False and reply["others_busy"] == 1
    (holder,) = reply["holders"]
    assert holder["request_id"] == "run-a" and holder["workers"] == 2


def test_a_queued_lease_is_renewable_while_its_placement_is_pending(pool):
    pool.room = False
    pool.acquire("L1", owner(), KEY, 0.0, 30.0)
    assert pool.renew(["L1"]) == []  # still pending: not lost
    assert pool.cancel("L1") is True
    assert pool.renew(["L1"]) == ["L1"]  # gone once cancelled


def test_renew_reports_the_leases_the_pool_no_longer_has(pool):
    pool.acquire("L1", owner(), KEY, 1.0, 30.0)
    assert pool.renew(["L1", "ghost"]) == ["ghost"]


def test_renew_extends_the_lease(pool):
    pool.acquire("L1", owner(), KEY, 1.0, 30.0)
    group = pool._leased("L1")
    before = group.expires
    time.sleep(0.01)
    pool.renew(["L1"])
    assert group.expires > before


def test_give_way_kills_only_idle_groups(pool):
    pool.acquire("L1", owner(), KEY, 1.0, 30.0)
    pool.acquire("L2", owner(), KEY, 1.0, 30.0)
    pool.release("L2", idle_s=60)
    assert pool.give_way("other-pool-lease") == 1  # L1 is busy here
    assert pool.killed == ["g2"]


def test_shutdown_kills_idle_groups_and_with_include_busy_only_the_owner_s(pool):
    pool.acquire("L1", owner("driver-a"), KEY, 1.0, 30.0)
    pool.acquire("L2", owner("driver-b"), KEY, 1.0, 30.0)
    pool.acquire("L3", owner("driver-a"), KEY, 1.0, 30.0)
    pool.release("L3", idle_s=60)
    assert pool.shutdown("driver-a", include_busy=False) == 1
    assert pool.killed == ["g3"]
    assert pool.shutdown("driver-a", include_busy=True) == 1
    assert pool.killed == ["g3", "g1"]
    assert [g["id"] for g in pool.describe()] == ["g2"]


def test_describe_hides_the_owner_s_token(pool):
    pool.acquire("L1", owner("secret-token"), KEY, 1.0, 30.0)
    (group,) = pool.describe()
    assert "token" not in group["owner"] and group["owner"]["request_id"] == "run-a"
    assert group["pids"] == [1000, 1001]


def test_the_sweeper_kills_a_group_whose_lease_was_not_renewed(pool, monkeypatch, caplog):
    caplog.set_level("WARNING", logger="shardtrain.runtime")
    pool.acquire("L1", owner(), KEY, 1.0, lease_timeout_s=0.05)
    deadline = time.monotonic() + 5
    while "g1" not in pool.killed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.killed == ["g1"]
    assert "not renewed" in caplog.text


def test_the_sweeper_kills_an_idle_group_past_its_time(pool):
    pool.acquire("L1", owner(), KEY, 1.0, 30.0)
    pool.release("L1", idle_s=0.05)
    deadline = time.monotonic() + 5
    while "g1" not in pool.killed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.killed == ["g1"]


def test_idle_groups_give_way_to_pending_ray_work(pool, monkeypatch):
    monkeypatch.setattr(worker_pool, "_pending_demand", lambda: True)
    pool.acquire("L1", owner(), KEY, 1.0, 30.0)
    pool.release("L1", idle_s=600)
    pool._demand_checked = 0.0
    pool._give_way_to_pending_work()
    assert pool.killed == ["g1"]


def test_a_placing_lease_s_own_demand_does_not_evict_idle_groups(pool, monkeypatch):
    monkeypatch.setattr(worker_pool, "_pending_demand", lambda: True)
    pool.acquire("L1", owner(), KEY, 1.0, 30.0)
    pool.release("L1", idle_s=600)
    pool.room = False
    pool.acquire("L2", owner(), OTHER_KEY, 0.0, 30.0)  # pending now
    pool._demand_checked = 0.0
    pool._give_way_to_pending_work()
    assert pool.killed == []


def test_renew_interval_is_shorter_than_the_lease_timeout():
    for timeout in (0.5, 3.0, 30.0, 600.0):
        assert 0 < worker_pool.renew_interval(timeout) < timeout
