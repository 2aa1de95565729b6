"""The example flows deployed as users deploy them: a real Prefect server in a subprocess (the
session's harness server), ``serve()`` in another process, a deployment run of every flow,
and the results read back by this process from Prefect's persisted results (the flow's dict
and the training task's ``ModelArtifact``), with each run's Prefect artifacts, registration
and log (the flows run here only: an in-process run of each checked the same).

A flow module with ``from __future__ import annotations`` and block-typed parameters passed
in-process runs but failed here (``PydanticUserError: ... is not fully defined``): only a
deployment run validates parameters from the flow's entrypoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from shardtrain import ModelArtifact, load_model

pytestmark = [pytest.mark.prefect, pytest.mark.subprocess]  # a Prefect server, a serving process and three flow runs

REPO = Path(__file__).resolve().parents[3]
FLOWS = {  # deployment name -> (flow name, framework)
    "shardtrain-xgboost/test": "xgboost",
    "shardtrain-lightgbm/test": "lightgbm",
    "shardtrain-pytorch/test": "pytorch",
}
SERVE = """
import sys

sys.path.insert(0, "dags")  # as `cd dags && python serve.py` would: no PYTHONPATH for the runs
from prefect import serve
from xgboost_flow import xgboost_training
from lightgbm_flow import lightgbm_training
from pytorch_flow import pytorch_training

serve(
    *(f.to_deployment(name="test", parameters={"rows": 5000})
      for f in (xgboost_training, lightgbm_training, pytorch_training)),
    limit=3,  # all three at once: their fits queue for the 2-CPU head's workers
)
"""


def _deployed(client) -> bool:
    """Whether every deployment of FLOWS is registered (the server is the session's)."""
    from prefect.exceptions import ObjectNotFound

    try:
        for name in FLOWS:
            client.read_deployment_by_name(name)
    except ObjectNotFound:
        return False
    return True


def _log_of(client, flow_run_id, expected: str) -> str:
    """The flow run's log as the API holds it, once it has ``expected`` (the run's process
    sends its last lines as it exits)."""
    from prefect.client.schemas.filters import LogFilter

    deadline = time.monotonic() + 30
    while True:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id={"any_": [flow_run_id]}))
        log = "\n".join(entry.message for entry in logs)
        if expected in log or time.monotonic() > deadline:
            assert expected in log, log[-4000:]
            return log
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


@pytest.fixture
def prefect_server(prefect_harness, ray_head, mlflow_template):
    """The environment of a process that serves deployments to the session's Prefect server
    (the harness's API server: a real server in its own process), with a results folder of
    its own; the runs join the session's Ray head and register in its home's default registry.

    The results folder is outside pytest's temp root, which concurrent pytest sessions prune.
    The runner looks for scheduled runs every second (Prefect's default: every 10 s). The
    default registry starts as a copy of an empty one (this test is not about its creation)."""
    from prefect.settings import PREFECT_API_URL

    from tests.helpers import seed_mlflow_registry

    seed_mlflow_registry(
        mlflow_template, Path(ray_head.cluster_dir).parent / "mlflow" / "mlflow.db"
    )
    with tempfile.TemporaryDirectory(prefix="prefect-deploy-") as tmp:
        yield dict(
            os.environ,
            PREFECT_API_URL=PREFECT_API_URL.value(),
            PREFECT_LOCAL_STORAGE_PATH=str(Path(tmp) / "results"),
            PREFECT_RUNNER_POLL_FREQUENCY="1",
        )


def test_every_example_flow_runs_as_a_served_deployment(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from prefect_shardtrain.tasks import artifact_key

    # No PYTHONPATH: each run loads its flow from the entrypoint file, as a deployment does.
    env = {k: v for k, v in prefect_server.items() if k != "PYTHONPATH"}
    serving = subprocess.Popen(
        [sys.executable, "-c", SERVE],
        cwd=REPO,
        env=env,  # the session's SHARDTRAIN_HOME: the runs join its Ray head
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    settings = {
        PREFECT_API_URL: env["PREFECT_API_URL"],
        PREFECT_LOCAL_STORAGE_PATH: env["PREFECT_LOCAL_STORAGE_PATH"],
    }
    try:
        with temporary_settings(updates=settings), get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while not _deployed(client):
                assert serving.poll() is None, _stop(serving)
                assert time.monotonic() < deadline, "serve() registered no deployments"
                time.sleep(0.5)
            runs = {name: run_deployment(name, timeout=0) for name in FLOWS}
            deadline = time.monotonic() + 400
            while True:
                states = {n: client.read_flow_run(r.id).state for n, r in runs.items()}
                if all(s.is_final() for s in states.values()):
                    break
                assert time.monotonic() < deadline, states
                time.sleep(1)
            failed = {n: s for n, s in states.items() if not s.is_completed()}
            assert not failed, (failed, _stop(serving)[-6000:])

            # Read back by this process (not the one that ran the flows): the flow's result
            # and the training task's result, both from Prefect's persisted results.
            for name, framework in FLOWS.items():
                result = states[name].result()
                artifact = result["artifact"]
                assert isinstance(artifact, ModelArtifact) and artifact.framework == framework
                assert load_model(artifact) is not None
                registered = result["registered"]
                assert registered.request_id == artifact.request_id
                assert registered.source_uri == artifact.uri
                assert registered.model_uri.startswith(f"models:/shardtrain_{framework}_flow/")
                assert result["holdout_rmse"] > 0
                # the run's Prefect artifacts and its log, as this process reads them
                key = artifact_key(artifact.request_id)
                by_key = {a.key: a for a in client.read_artifacts()}
                assert by_key[f"model-{key}"].type == "markdown"
                assert artifact.uri in by_key[f"model-{key}"].data
                assert by_key[f"metrics-{key}"].type == "table"
                log = _log_of(client, runs[name].id, f"model published to {artifact.uri}")
                if framework == "xgboost":
                    assert "train-rmse:" in log and "eval-rmse:" in log  # per-round metrics
                tasks = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[name].id]))
                )
                train = [t for t in tasks if t.name.startswith("train_")]
                assert len(train) == 1, [t.name for t in tasks]
                assert train[0].state.result() == artifact
    finally:
        output = _stop(serving)
    # Ranks' stdout goes to the Ray job that created the cluster's worker pool (the first
    # driver; later ones get its warm workers), so whether Ray prefixes any here depends on
    # which test ran first: ranks' warnings reach every run's log through the driver instead
    # (tests/core/test_worker_pool.py). Whatever Ray prints here has no ANSI colour codes.
    worker_lines = [line for line in output.splitlines() if " pid=" in line]
    assert not [line for line in worker_lines if "\x1b[" in line]
