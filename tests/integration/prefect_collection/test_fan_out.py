"""Prefect's task fan-out (``.submit()`` and ``.map()``) runs training tasks in threads of one
process at once: they connect to Ray once between them and queue for the workers (a real
local Ray of 2 CPUs, where every fit here needs both)."""

from __future__ import annotations

import os
import sys

import pytest
from prefect import flow, unmapped

from prefect_shardtrain import train_lightgbm, train_xgboost
from shardtrain import load_model
from shardtrain.runtime import worker_group

pytestmark = pytest.mark.prefect  # the Prefect harness and a real local Ray

TWO = {"num_workers": 2, "num_cpu_per_worker": 1}


@pytest.fixture
def unconnected(ray_cluster, ray_head):
    """This process disconnected from Ray, so that the fanned-out tasks connect themselves
    (at the same moment); joined again afterwards as ``ray_cluster`` joined it."""
    import ray

    from shardtrain.runtime import local_cluster

    worker_group.shutdown_workers()
    ray.shutdown()
    yield
    worker_group.shutdown_workers()
    ray.shutdown()
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    local_cluster.join(ray_head, runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}})


def test_submit_and_map_fan_out_training_tasks(api, unconnected):
    from example_data import FEATURES, LABEL, prepare

    data = prepare(3000)["train"]

    @flow
    def fan_out():
        submitted = [
            train_xgboost.submit(data, FEATURES, LABEL, n_estimators=4 + i, scaling_config=TWO)
            for i in range(2)
        ]
        mapped = train_lightgbm.map(
            unmapped(data),
            unmapped(FEATURES),
            unmapped(LABEL),
            n_estimators=[3, 6],
            scaling_config=unmapped(TWO),
        )
        return [f.result() for f in submitted], [f.result() for f in mapped]

    state = fan_out(return_state=True)
    assert state.is_completed(), state
    submitted, mapped = state.result()
    artifacts = submitted + mapped
    assert len({a.request_id for a in artifacts}) == 4
    assert [load_model(a).num_boosted_rounds() for a in submitted] == [4, 5]
    assert [load_model(a).current_iteration() for a in mapped] == [3, 6]
