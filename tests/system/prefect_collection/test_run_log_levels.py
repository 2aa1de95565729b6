"""Ray's and MLflow's info lines reach the Prefect task run's log, at info.

Ray and MLflow write them to stderr through handlers of their own, so before they never
reached the run's log. The flow runs in a fresh process (this test process is joined to Ray
already, and Ray logs "Connecting to ..." only when a process joins), against the harness's
API server; the test reads the run's logs back from the API.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import write_regression

pytestmark = [pytest.mark.prefect, pytest.mark.subprocess]  # the Prefect harness, a flow in a subprocess and real Ray

FLOW = """
import os
import sys

from prefect import flow

from prefect_shardtrain import register_model, train_xgboost


@flow
def log_levels():
    artifact = train_xgboost(os.environ["LOG_LEVELS_DATA"], ["A", "B", "C"], "Y",
                             n_estimators=3, verbose_eval=1,
                             scaling_config={"num_workers": 2, "num_cpu_per_worker": 1})
    register_model(artifact, name="run_log_levels", registry=os.environ["LOG_LEVELS_REGISTRY"])


state = log_levels(return_state=True)
print("FLOW_RUN", state.state_details.flow_run_id)
sys.exit(0 if state.is_completed() else 1)
"""


def test_ray_and_mlflow_info_lines_are_info_in_the_run_log(
    api, ray_head, mlflow_registry, tmp_path
):
    from prefect.client.schemas.filters import LogFilter
    from prefect.settings import PREFECT_API_URL

    script = tmp_path / "log_levels_flow.py"
    script.write_text(FLOW)
    env = dict(
        os.environ,
        PREFECT_API_URL=PREFECT_API_URL.value(),
        SHARDTRAIN_HOME=str(Path(ray_head.cluster_dir).parent),  # joins the session's head
        LOG_LEVELS_DATA=write_regression(tmp_path / "train.parquet", rows=400),
        LOG_LEVELS_REGISTRY=mlflow_registry,
    )
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=400
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    flow_run_id = uuid.UUID(result.stdout.split("FLOW_RUN", 1)[1].split()[0])
    time.sleep(1)  # the child drained its log queue on exit; let the server commit it
    logs = api.read_logs(log_filter=LogFilter(flow_run_id={"any_": [flow_run_id]}))

    def records(prefix: str) -> list[tuple[str, int]]:
        return [(log.name, log.level) for log in logs if log.message.startswith(prefix)]

    # before: Ray's and MLflow's lines never reached the run's log (stderr only, or lost)
    assert records("Connecting to existing Ray cluster at address") == [
        ("ray._private.worker", logging.INFO)
    ]
    assert records("Created version '1' of model 'run_log_levels'") == [("mlflow", logging.INFO)]
    assert all(log.task_run_id is not None for log in logs if log.name.startswith("ray"))
    assert not [log for log in logs if "\x1b[" in log.message]  # no colour codes
    for round_ in (1, 2, 3):  # each round's metrics once
        assert len([log for log in logs if log.message.startswith(f"[{round_}]\ttrain-")]) == 1
