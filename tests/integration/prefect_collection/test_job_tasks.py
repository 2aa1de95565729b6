"""Training tasks as Ray Jobs under the Prefect harness, on the session's local Ray head and
its job server: the task returns the same ModelArtifact as in process, the job's log lines
reach the run's log, the job server's token (a block secret) reaches no job or log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from prefect import flow

from prefect_shardtrain import ModelStage, RayCluster, train_pytorch, train_xgboost
from shardtrain import ModelArtifact, load_model
from shardtrain.errors import ConfigError
from shardtrain.runtime import worker_group
from tests.helpers import FEATURES, LABEL, write_regression

pytestmark = [pytest.mark.prefect, pytest.mark.jobs]  # the Prefect harness and real Ray jobs

FUNCS = Path(__file__).resolve().parents[2] / "system" / "core"  # jobs_train_funcs.py


@pytest.fixture(scope="module")
def cluster_block(ray_head):
    worker_group.shutdown_workers()  # the jobs' workers need the CPUs
    return RayCluster(
        job_server=ray_head.dashboard_url,
        job_server_token=ray_head.token_path.read_text().strip(),
        python=sys.executable,
        runtime_env={"env_vars": {"PYTHONPATH": str(FUNCS)}},
    )


def test_training_tasks_run_as_ray_jobs(api, ray_head, cluster_block, tmp_path):
    from tests.integration.prefect_collection.test_flows import logs_of

    data = write_regression(tmp_path / "train.parquet", rows=2_000)
    stage = ModelStage(uri=str(tmp_path / "stage"))

    @flow
    def jobs_flow():  # both jobs at once: each needs one of the head's two CPUs
        xgb = train_xgboost.submit(
            data,
            FEATURES,
            LABEL,
            n_estimators=20,
            verbose_eval=5,
            scaling_config={"num_workers": 1, "num_cpu_per_worker": 1},
            ray_cluster=cluster_block,
            stage=stage,
        )
        torch_model = train_pytorch.submit(
            "jobs_train_funcs:tiny_torch",
            dataset_map={"train": data},
            hyper_params={"features": FEATURES},
            scaling_config={"num_nodes": 1, "num_workers_per_node": 1},
            ray_cluster=cluster_block,
            stage=stage,
        )
        return xgb.result(), torch_model.result()

    state = jobs_flow(return_state=True)
    xgb, torch_model = state.result()
    assert isinstance(xgb, ModelArtifact) and xgb.framework == "xgboost"
    assert xgb.uri.startswith(str(tmp_path / "stage"))
    assert load_model(xgb).num_boosted_rounds() == 20
    assert torch_model.framework == "pytorch"

    client = ray_head.job_client()
    token = cluster_block.job_server_token.get_secret_value()
    for artifact in (xgb, torch_model):
        jobs = [
            j
            for j in client.list_jobs()
            if (j.metadata or {}).get("shardtrain_request_id") == artifact.request_id
        ]
        assert [str(j.status) for j in jobs] == ["SUCCEEDED"]
        shown = json.dumps([jobs[0].entrypoint, jobs[0].metadata, jobs[0].runtime_env], default=str)
        assert token not in shown and token not in client.get_job_logs(jobs[0].submission_id)

    logs = logs_of(api, state.state_details.flow_run_id)
    assert "submitted Ray job shardtrain-prefect-" in logs
    assert "[ray job] [15]" in logs  # the job's per-round metrics, forwarded as they came
    assert token not in logs


def test_a_job_refuses_what_it_cannot_carry(prefect_harness, cluster_block, tmp_path):
    @flow
    def callable_flow():
        return train_pytorch(lambda: None, ray_cluster=cluster_block, as_job=True)

    with pytest.raises(ConfigError, match="dotted path"):
        callable_flow()
