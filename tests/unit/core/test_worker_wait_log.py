"""A fit queued behind other fits' workers says whose they are and when they came
(``worker_group.lease``, the pool's ``holders``): the pool's answers are faked, no Ray."""

from __future__ import annotations

import logging
import math
import time

import pytest

from shardtrain.runtime import worker_group, worker_pool
from shardtrain.runtime.resources import WorkerShape

TWO = WorkerShape(num_workers=2, cpus=1, gpus=0)
HOLDER = {"request_id": "run-a", "pid": 4242, "host": "node-1", "workers": 2, "for_s": 7.4}


class FakePool:
    """``worker_pool.acquire``: not granted (another fit holds the workers) until
    ``grant_after`` seconds, then granted; records the waits it was asked for."""

    def __init__(self, grant_after: float, others_busy: int = 1, holders=(HOLDER,)) -> None:
        self.began = time.monotonic()
        self.grant_after = grant_after
        self.others_busy = others_busy
        self.holders = None if holders is None else list(holders)
        self.calls: list[tuple[float, str | None]] = []

    def acquire(self, lease, key, wait_s, lease_timeout_s, request_id=None):
        self.calls.append((wait_s, request_id))
        if time.monotonic() - self.began >= self.grant_after:
            return self, {"granted": True, "id": "g1", "workers": [], "infos": []}
        time.sleep(min(wait_s, 0.02))
        reply = {"granted": False, "others_busy": self.others_busy}
        if self.holders is not None:
            reply["holders"] = self.holders
        return self, reply


@pytest.fixture
def fake_pool(monkeypatch):
    def install(pool: FakePool, elsewhere: int = 0) -> FakePool:
        monkeypatch.setattr(worker_pool, "acquire", pool.acquire)
        monkeypatch.setattr(worker_pool, "others_give_way", lambda lease: elsewhere)
        monkeypatch.setattr(worker_pool, "cancel", lambda lease: None)
        monkeypatch.setattr(worker_pool, "drop", lambda lease: None)
        monkeypatch.setattr(worker_group, "_give_back", lambda group, pool, lease: None)
        return pool

    monkeypatch.setattr(worker_group, "WAIT_LOG_AFTER_S", 0.1)
    monkeypatch.setenv("SHARDTRAIN_PLACEMENT_TIMEOUT_S", "30")
    return install


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "shardtrain.runtime"]


def test_a_queued_fit_says_whose_workers_it_waits_for_and_when_they_came(fake_pool, caplog):
    caplog.set_level(logging.INFO, "shardtrain.runtime")
    pool = fake_pool(FakePool(grant_after=0.5))
    with worker_group.lease(TWO, request_id="run-b") as group:
        assert group.id == "g1"
    waiting, came = _lines(caplog)
    assert waiting == (
        "Waiting for workers: run run-b needs 2 worker(s) that other fits hold: run run-a "
        "holds 2 worker(s) (driver pid 4242 on node-1, for 7 s); it queues until they are "
        "given back (no deadline while they run)"
    )
    assert came.startswith("Workers came: run run-b got its 2 worker(s) after waiting ")
    assert came.endswith(" s for other fits")
    waited = float(came.split("after waiting ")[1].split(" s")[0])
    assert 0.5 <= waited < 5
    assert all(record.levelno == logging.INFO for record in caplog.records)
    # Every try names the run it is for (the pool records it with the lease).
    assert {request_id for _, request_id in pool.calls} == {"run-b"}
    # Queued, its next try ends when it is time to say so, not after a whole QUEUE_TRY_S.
    assert pool.calls[0][0] == worker_group.PLACEMENT_TRY_S
    assert pool.calls[1][0] <= worker_group.WAIT_LOG_AFTER_S
    assert pool.calls[-2][0] == worker_group.QUEUE_TRY_S  # after the line: whole tries


def test_holders_in_other_pools_and_runs_without_a_request_id(fake_pool, caplog):
    caplog.set_level(logging.INFO, "shardtrain.runtime")
    anonymous = {**HOLDER, "request_id": None}
    fake_pool(FakePool(grant_after=0.3, others_busy=1, holders=[anonymous]), elsewhere=2)
    with worker_group.lease(TWO):
        pass
    waiting, came = _lines(caplog)
    assert waiting.startswith(
        "Waiting for workers: a run without a request id needs 2 worker(s) that other fits "
        "hold: a run without a request id holds 2 worker(s) (driver pid 4242 on node-1, "
        "for 7 s); 2 other fit(s) hold or wait for more; it queues"
    )
    assert came.startswith("Workers came: a run without a request id got its 2 worker(s)")


def test_a_pool_that_names_no_holders_still_gets_a_line(fake_pool, caplog):
    """A pool actor started by an older shardtrain answers without ``holders``."""
    caplog.set_level(logging.INFO, "shardtrain.runtime")
    fake_pool(FakePool(grant_after=0.3, holders=None))
    with worker_group.lease(TWO, request_id="run-b"):
        pass
    waiting, _ = _lines(caplog)
    assert "that other fits hold: 1 other fit(s) hold or wait for them; it queues" in waiting


def test_no_line_when_the_workers_come_soon(fake_pool, caplog):
    caplog.set_level(logging.INFO, "shardtrain.runtime")
    fake_pool(FakePool(grant_after=0.0))
    with worker_group.lease(TWO, request_id="run-b"):
        pass
    assert _lines(caplog) == []


def test_no_line_when_nobody_holds_them(fake_pool, caplog):
    """Short of resources with no other fit running: that is a placement wait, which ends in
    a ScalingConfigError after SHARDTRAIN_PLACEMENT_TIMEOUT_S, not a queue."""
    caplog.set_level(logging.INFO, "shardtrain.runtime")
    fake_pool(FakePool(grant_after=0.3, others_busy=0, holders=[]))
    with worker_group.lease(TWO, request_id="run-b"):
        pass
    assert _lines(caplog) == []


def test_the_pool_names_the_other_leases_busy_groups():
    pool = worker_pool.WorkerPool()
    key = (TWO, "SPREAD", 1)
    owner_a = {"token": "t", "pid": 11, "host": "h1", "job_id": "01", "request_id": "run-a"}
    busy = worker_pool._Group("a", key, None, ["w0", "w1"], [], state="busy", lease="la")
    busy.owner, busy.expires = owner_a, math.inf
    mine = worker_pool._Group("b", key, None, ["w0", "w1"], [], state="busy", lease="lb")
    mine.expires = math.inf
    idle = worker_pool._Group("c", key, None, ["w0"], [], state="idle", idle_until=math.inf)
    with pool._lock:
        pool._groups.update(a=busy, b=mine, c=idle)
        holders = pool._holders("lb")
    assert holders == [
        {"request_id": "run-a", "pid": 11, "host": "h1", "workers": 2, "for_s": holders[0]["for_s"]}
    ]
    assert 0 <= holders[0]["for_s"] < 60
    with pool._lock:
        pool._groups.clear()
