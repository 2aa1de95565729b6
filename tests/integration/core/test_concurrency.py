"""One driver, several fits at once, and a warm pool that may hold dead workers; on a real local
Ray of 2 CPUs, where one fit of 2 workers x 1 CPU takes every CPU."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator, LightGBMScalingConfig
from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig
from shardtrain.runtime import worker_group

pytestmark = pytest.mark.ray  # real Ray workers

FEATURES = ["A", "B", "C"]
TWO = {"num_workers": 2, "num_cpu_per_worker": 1}
rng = np.random.default_rng(3)
FRAME = pd.DataFrame(rng.standard_normal((2000, 3)), columns=FEATURES)
FRAME["Y"] = FRAME.A * 2 - FRAME.B + rng.normal(0, 0.1, len(FRAME))


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_cluster):
    worker_group.shutdown_workers()
    yield
    worker_group.shutdown_workers()


def test_an_idle_warm_worker_that_died_is_not_leased(tmp_path):
    """Item 7: kill an idle warm worker; the next fit starts a new group instead of failing."""
    est = XGBEstimator(n_estimators=3, scaling_config=XGBScalingConfig(**TWO))
    est.fit(FRAME, FEATURES, "Y", artifact_stage_location=str(tmp_path))
    [group] = worker_group.idle_groups()
    os.kill(group["pids"][1], signal.SIGKILL)
    booster = est.fit(FRAME, FEATURES, "Y", artifact_stage_location=str(tmp_path))
    assert booster.num_boosted_rounds() == 3
    assert all(g["id"] != group["id"] for g in worker_group.idle_groups())


def test_fits_from_several_threads_queue_for_the_workers(tmp_path, monkeypatch):
    """Item 4: five threads fitting at once (each fit needs every CPU) all finish: they queue
    for the one group, and an idle group of another shape gives way to a waiting fit."""
    monkeypatch.setenv("SHARDTRAIN_PLACEMENT_TIMEOUT_S", "10")
    results, errors = {}, []

    def fit(index):
        try:
            if index % 2:
                est = LightGBMEstimator(n_estimators=5, scaling_config=LightGBMScalingConfig(**TWO))
            else:
                est = XGBEstimator(n_estimators=5, scaling_config=XGBScalingConfig(**TWO))
            est.fit(FRAME, FEATURES, "Y", artifact_stage_location=str(tmp_path / str(index)))
            results[index] = est.get_artifact()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=fit, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert sorted(results) == [0, 1, 2, 3, 4]
    assert len({a.request_id for a in results.values()}) == 5
    # a one-CPU-per-worker group of one shape serves them all, no minutes-long waits
    assert time.monotonic() - started < 240
    # idle groups of a different shape give way too
    with worker_group.lease(worker_group.WorkerShape(1, 2.0, 0.0)) as group:
        assert group.world_size == 1
