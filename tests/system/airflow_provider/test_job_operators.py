"""The training operators as Ray Jobs, on real Airflow (dag.test(), which runs triggers inline)
and a real local Ray head with its job server (the session's long-lived cluster).

Deferred and waiting-in-the-worker runs return the same artifact XCom as in-process runs;
stopping a task stops its job and nothing is published; a failing job's error carries its log; the job server's token, held in
the ray connection, appears in no job metadata, entrypoint, log or XCom.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shardtrain import ModelArtifact, load_model
from shardtrain.errors import JobStoppedError, ModelIntegrityError
from shardtrain.integrations import TrainingSpec
from shardtrain.jobs import TERMINAL, JobHandle, read_published
from shardtrain.runtime import worker_group
from shardtrain_airflow.operators import XGBoostTrainOperator
from shardtrain_airflow.triggers.ray_job import RayJobTrigger
from tests.helpers import FEATURES, LABEL, TaskInstanceIdentity, write_regression

pytestmark = [pytest.mark.airflow, pytest.mark.subprocess, pytest.mark.jobs]  # real Airflow in subprocesses, real Ray jobs

REPO = Path(__file__).resolve().parents[3]
FUNCS = REPO / "tests" / "system" / "core"  # jobs_train_funcs.py: a train function jobs import
ONE = {"num_workers": 1, "num_cpu_per_worker": 1}

DAG_FILE = """
import os, sys
import pendulum
from airflow.sdk import DAG
from shardtrain_airflow.operators import PyTorchTrainOperator, XGBoostTrainOperator

common = dict(artifact_stage_location=os.environ["JOB_STAGE"], ray_conn_id="ray_jobs",
              poll_interval=0.5, deferrable=os.environ.get("DEFERRABLE") == "1",
              run_as_job=True)
with DAG(os.environ["DAG_ID"], schedule=None, start_date=pendulum.datetime(2026, 1, 1),
         catchup=False) as dag:
    XGBoostTrainOperator(task_id="train", path=os.environ["JOB_DATA"],
                         input_cols=os.environ["JOB_COLS"], label_col="Y",
                         n_estimators=int(os.environ.get("ROUNDS", "20")), verbose_eval=5,
                         scaling_config={"num_workers": 1, "num_cpu_per_worker": 1}, **common)
    if os.environ.get("WITH_TORCH") == "1":
        PyTorchTrainOperator(task_id="train_torch", train_func="jobs_train_funcs:tiny_torch",
                             dataset_map={"train": {"path": os.environ["JOB_DATA"]}},
                             hyper_params={"features": ["A", "B", "C"]},
                             scaling_config={"num_nodes": 1, "num_workers_per_node": 1},
                             **common)

if __name__ == "__main__":
    when = os.environ.get("LOGICAL_DATE")  # fixed: a rerun is the same run (same run_id)
    dag.test(**({"logical_date": pendulum.parse(when), "run_after": pendulum.parse(when)} if when else {}))
"""


@pytest.fixture(scope="module")
def jobs_env(airflow_env, ray_head, tmp_path_factory):
    """Env for DAG subprocesses: the session's head (same $SHARDTRAIN_HOME) and a ray
    connection naming its job server, with the job server's token as the password."""
    worker_group.shutdown_workers()  # the jobs' workers need the CPUs
    root = tmp_path_factory.mktemp("jobs_dag")
    (airflow_env.dags / "jobs_dag.py").write_text(DAG_FILE)
    token = ray_head.token_path.read_text().strip()
    connection = {
        "conn_type": "ray",
        "password": token,
        "extra": {
            "job_server": ray_head.dashboard_url,
            "python": sys.executable,
            "runtime_env": json.dumps({"env_vars": {"PYTHONPATH": str(FUNCS)}}),
        },
    }
    env = {
        "SHARDTRAIN_HOME": os.environ["SHARDTRAIN_HOME"],
        "AIRFLOW_CONN_RAY_JOBS": json.dumps(connection),
        "JOB_DATA": write_regression(root / "train.parquet", rows=2_000),
        "JOB_COLS": ",".join(FEATURES),
    }
    return env, token


def run_dag(airflow_env, env, timeout=400, **extra):
    return subprocess.run(
        [sys.executable, str(airflow_env.dags / "jobs_dag.py")],
        cwd=REPO,
        env={**airflow_env.env, **env, **extra},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def jobs_of(ray_head, request_id):
    prefix = f"shardtrain-{request_id}-"
    return [
        j for j in ray_head.job_client().list_jobs() if (j.submission_id or "").startswith(prefix)
    ]


def test_deferred_operators_return_the_in_process_artifact_shape(
    airflow_env, ray_head, jobs_env, tmp_path
):
    env, token = jobs_env
    result = run_dag(
        airflow_env,
        env,
        DAG_ID="jobs_deferred",
        DEFERRABLE="1",
        WITH_TORCH="1",
        JOB_STAGE=str(tmp_path / "stage"),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    states = dict(
        airflow_env.query(
            "select task_id, state from task_instance where dag_id=?", "jobs_deferred"
        )
    )
    assert states == {"train": "success", "train_torch": "success"}, output[-4000:]

    xgb = airflow_env.xcom("jobs_deferred", "train")
    assert set(xgb) == set(ModelArtifact.__dataclass_fields__)  # the in-process XCom's shape
    artifact = ModelArtifact.from_dict(xgb)
    assert artifact.framework == "xgboost" and artifact.uri.startswith(str(tmp_path / "stage"))
    assert load_model(artifact).num_boosted_rounds() == 20
    torch_artifact = ModelArtifact.from_dict(airflow_env.xcom("jobs_deferred", "train_torch"))
    # the job imported its train function (jobs_train_funcs:tiny_torch) on the cluster
    assert torch_artifact.framework == "pytorch"
    assert [f["path"] for f in torch_artifact.files] == ["model.pt"]

    # One job per task, found by the artifact's request id; the link points at it.
    for art, task in ((artifact, "train"), (torch_artifact, "train_torch")):
        jobs = jobs_of(ray_head, art.request_id)
        assert [str(j.status) for j in jobs] == ["SUCCEEDED"]
        link = airflow_env.xcom("jobs_deferred", task, key="ray_job")
        assert link["submission_id"] == jobs[0].submission_id
        assert link["dashboard_url"] == f"{ray_head.dashboard_url}/#/jobs/{jobs[0].submission_id}"

    # The trigger forwarded the job's log (per-round metrics) into the task log.
    assert "[ray job]" in output and "[15]" in output, output[-4000:]

    # The token in the ray connection reached no job, log or XCom.
    client = ray_head.job_client()
    for art in (artifact, torch_artifact):
        (job,) = jobs_of(ray_head, art.request_id)
        shown = json.dumps(
            {"entrypoint": job.entrypoint, "metadata": job.metadata, "env": job.runtime_env},
            default=str,
        )
        assert token not in shown
        assert token not in client.get_job_logs(job.submission_id)
    assert token not in output
    assert not [r for r in airflow_env.query("select value from xcom") if token in str(r[0])]


# A task process killed while it waits for its job, and its retry reattaching to that one job:
# tests/system/airflow_provider/test_airflow_services.py, under a real scheduler (the kill of a
# LocalExecutor task process, the retry the scheduler starts), not dag.test() run twice.


def test_a_failing_job_fails_the_task_with_its_log(airflow_env, jobs_env, tmp_path):
    env, _ = jobs_env
    result = run_dag(
        airflow_env,
        {**env, "JOB_COLS": "A,NOPE"},
        DAG_ID="jobs_failing",
        DEFERRABLE="1",
        JOB_STAGE=str(tmp_path / "stage"),
    )
    output = result.stdout + result.stderr
    states = dict(
        airflow_env.query("select task_id, state from task_instance where dag_id=?", "jobs_failing")
    )
    assert states == {"train": "failed"}, output[-4000:]
    assert "JobFailedError" in output and "'NOPE'" in output, output[-4000:]
    assert not (tmp_path / "stage" / "model").exists() or not list(
        (tmp_path / "stage" / "model").rglob("_MANIFEST.json")
    )


def _long_spec(tmp_path, request_id) -> TrainingSpec:
    return TrainingSpec(
        framework="xgboost",
        request_id=request_id,
        artifact_stage_location=str(tmp_path / "stage"),
        train_data={"path": write_regression(tmp_path / "train.parquet", rows=2_000)},
        input_cols=FEATURES,
        label_col=LABEL,
        n_estimators=100_000,
        scaling_config=ONE,
        verbose_eval=50,
    )


def _wait_running(handle, seen_marker="[50]"):
    deadline, seen = time.monotonic() + 120, ""
    while seen_marker not in seen:
        assert time.monotonic() < deadline, seen[-2000:]
        seen += handle.logs()
        time.sleep(0.5)


def test_user_killing_a_deferred_task_stops_its_job_and_nothing_is_published(
    ray_head, jobs_env, tmp_path
):
    """Airflow calls the trigger's on_kill when a user marks a deferred task failed, clears
    it or marks it successful (dag.test() offers no user action, so the test calls it)."""
    from shardtrain.jobs import submit

    spec = _long_spec(tmp_path, "deferred-kill-1")
    handle = submit(spec)
    try:
        _wait_running(handle)
        trigger = RayJobTrigger(submission_id=handle.submission_id, spec=handle.spec.to_dict())
        asyncio.run(trigger.on_kill())
    finally:
        if handle.status() not in TERMINAL:
            handle.cancel()
    with pytest.raises(JobStoppedError):
        handle.wait(timeout_s=60)
    with pytest.raises(ModelIntegrityError):
        read_published(handle.spec)


def test_killing_a_task_waiting_in_its_worker_stops_its_job(ray_head, jobs_env, tmp_path):
    """Airflow calls on_kill from the task's signal handler while execute() waits (here:
    execute in a thread, on_kill from the test, as the task runner does)."""

    class TaskInstance(TaskInstanceIdentity):  # Airflow's runtime TI exists only in a task run
        def xcom_push(self, key, value):
            pushed[key] = value

    pushed: dict = {}
    ti = TaskInstance("dag", "manual__kill", "train")
    op = XGBoostTrainOperator(
        task_id="train",
        path=write_regression(tmp_path / "train.parquet", rows=2_000),
        input_cols=FEATURES,
        label_col=LABEL,
        n_estimators=100_000,
        verbose_eval=50,
        scaling_config=ONE,
        artifact_stage_location=str(tmp_path / "stage"),
        run_as_job=True,
        poll_interval=0.5,
    )
    errors: list[BaseException] = []

    def execute():
        try:
            op.execute({"ti": ti})
        except BaseException as exc:  # noqa: BLE001 - the thread hands its error over
            errors.append(exc)

    thread = threading.Thread(target=execute)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while op._job is None or op._job.status() != "RUNNING":
            assert time.monotonic() < deadline and thread.is_alive(), errors
            time.sleep(0.5)
        job = op._job
        # A handle of the test's own: the task's handle reads the log incrementally itself.
        _wait_running(JobHandle(job.submission_id, job.spec, job.target))
        op.on_kill()
        thread.join(timeout=60)
    finally:
        if op._job is not None and op._job.status() not in TERMINAL:
            op._job.cancel()  # never leave a 100k-round job running for later tests
    assert len(errors) == 1 and isinstance(errors[0], JobStoppedError), errors
    assert pushed["ray_job"]["submission_id"] == op._job.submission_id
    with pytest.raises(ModelIntegrityError):
        read_published(op._job.spec)
