"""A fit queued behind another fit's workers says whose they are (that run's request id, its
driver, how many) and when they came: the session's Ray head (2 CPUs) and the cluster's real
worker pool, two leases of this process on it."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import pytest

from shardtrain.runtime import worker_group
from shardtrain.runtime.resources import WorkerShape

pytestmark = pytest.mark.ray

TWO = WorkerShape(num_workers=2, cpus=1, gpus=0)  # the whole session head


@pytest.fixture(autouse=True)
def _empty_pools(ray_cluster):
    worker_group.shutdown_workers()
    yield
    worker_group.shutdown_workers()


def test_a_fit_waiting_for_another_fits_workers_says_whose_and_when_they_came(monkeypatch, caplog):
    monkeypatch.setattr(worker_group, "WAIT_LOG_AFTER_S", 2.0)
    caplog.set_level(logging.INFO, "shardtrain.runtime")
    holding, release, got = threading.Event(), threading.Event(), {}

    def holder():
        with worker_group.lease(TWO, request_id="run-holder"):
            holding.set()
            release.wait(120)

    def waiter():
        began = time.monotonic()
        with worker_group.lease(TWO, request_id="run-waiter") as group:
            got["after_s"] = time.monotonic() - began
            got["pids"] = [info["pid"] for info in group.infos]

    first = threading.Thread(target=holder)
    first.start()
    try:
        assert holding.wait(120), "the first fit got no workers"
        second = threading.Thread(target=waiter)
        second.start()
        deadline = time.monotonic() + 60
        while "Waiting for workers" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.1)
        assert "after_s" not in got  # still queued when it said so
    finally:
        release.set()
        first.join(120)
    second.join(120)
    assert "after_s" in got, caplog.text

    lines = [r.getMessage() for r in caplog.records if r.name == "shardtrain.runtime"]
    [waiting] = [x for x in lines if x.startswith("Waiting for workers")]
    [came] = [x for x in lines if x.startswith("Workers came")]
    assert waiting.startswith(
        "Waiting for workers: run run-waiter needs 2 worker(s) that other fits hold: run "
        f"run-holder holds 2 worker(s) (driver pid {os.getpid()} on {socket.gethostname()}, "
        "for "
    )
    assert waiting.endswith("; it queues until they are given back (no deadline while they run)")
    assert came.startswith("Workers came: run run-waiter got its 2 worker(s) after waiting ")
    waited = float(came.split("after waiting ")[1].split(" s")[0])
    assert worker_group.WAIT_LOG_AFTER_S <= waited <= got["after_s"] + 0.05
    assert lines.index(waiting) < lines.index(came)
