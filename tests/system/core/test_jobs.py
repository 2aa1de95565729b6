"""Ray Jobs on a real local Ray head with its job server (the session's long-lived cluster):
submit a TrainingSpec, reattach by request id, logs, cancel, failures, results from the stage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shardtrain import load_model
from shardtrain.errors import ConfigError, ModelIntegrityError
from shardtrain.integrations import TrainingSpec
from shardtrain.jobs import (
    TERMINAL,
    JobFailedError,
    JobServerError,
    JobStoppedError,
    JobTarget,
    read_published,
    submit,
)
from shardtrain.runtime import worker_group

pytestmark = [pytest.mark.jobs, pytest.mark.subprocess]

HERE = Path(__file__).parent
FEATURES = ["A", "B", "C"]
ONE = {"num_workers": 1, "num_cpu_per_worker": 1}


@pytest.fixture(scope="module")
def target(ray_head):
    # The job server's workers need the CPUs this test process's warm pool may hold.
    worker_group.shutdown_workers()
    return JobTarget.local(runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}})


@pytest.fixture(scope="module")
def parquet(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2_000, 3)).astype(np.float32)
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["Y"] = 2 * frame["A"] - frame["B"] + rng.normal(0, 0.1, len(frame))
    path = tmp_path_factory.mktemp("jobs_data") / "train.parquet"
    frame.to_parquet(path)
    return str(path)


def xgb_spec(parquet, stage, request_id, **overrides) -> TrainingSpec:
    args = dict(
        framework="xgboost",
        request_id=request_id,
        artifact_stage_location=str(stage),
        train_data={"path": parquet},
        input_cols=FEATURES,
        label_col="Y",
        n_estimators=20,
        params={"max_depth": 3},
        scaling_config=ONE,
        verbose_eval=5,
    )
    args.update(overrides)
    return TrainingSpec.from_dict(args)


def jobs_of(target, request_id):
    prefix = f"shardtrain-{request_id}-"
    return [j for j in target.client().list_jobs() if (j.submission_id or "").startswith(prefix)]


def test_job_trains_and_the_result_comes_from_the_stage(target, parquet, tmp_path):
    spec = xgb_spec(parquet, tmp_path / "stage", "job-xgb-1")
    handle = submit(spec, target)
    lines: list[str] = []
    assert handle.wait(timeout_s=180, on_log=lines.append) == "SUCCEEDED"
    artifact = handle.result()
    assert artifact.request_id == "job-xgb-1" and artifact.framework == "xgboost"
    assert artifact.uri.startswith(str(tmp_path / "stage" / "model"))
    booster = load_model(artifact)
    assert booster.num_boosted_rounds() == 20
    # The job's own log reached the caller line by line: per-round metrics and the location.
    assert any("[15]" in line for line in lines), lines[-20:]
    assert any("model published to" in line for line in lines)
    assert handle.dashboard_url.endswith(f"/#/jobs/{handle.submission_id}")

    again = submit(spec, target)  # a retried task: reattach, never a second job
    assert again.reattached and again.submission_id == handle.submission_id
    assert again.result() == artifact
    assert len(jobs_of(target, "job-xgb-1")) == 1


def test_a_killed_submitter_leaves_one_job_and_the_retry_reattaches(target, parquet, tmp_path):
    spec = xgb_spec(parquet, tmp_path / "stage", "job-killed-1", n_estimators=200)
    script = textwrap.dedent(
        f"""
        import sys, time
        from shardtrain.integrations import TrainingSpec
        from shardtrain.jobs import JobTarget, submit
        target = JobTarget.local(runtime_env={dict(target.runtime_env)!r})
        handle = submit(TrainingSpec.from_json({spec.to_json()!r}), target)
        print("SUBMITTED", handle.submission_id, flush=True)
        handle.wait(on_log=lambda line: None)
        """
    )
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        first = driver.stdout.readline().split()
        assert first[0] == "SUBMITTED", first
        os.kill(driver.pid, signal.SIGKILL)  # the worker process running the task dies
    finally:
        driver.wait(timeout=30)
    retry = submit(spec, target)
    assert retry.reattached and retry.submission_id == first[1]
    assert retry.wait(timeout_s=240) == "SUCCEEDED"
    assert retry.result().request_id == "job-killed-1"
    assert len(jobs_of(target, "job-killed-1")) == 1


def test_a_failing_job_carries_its_last_log_lines_and_a_retry_starts_a_new_attempt(
    target, parquet, tmp_path
):
    spec = xgb_spec(parquet, tmp_path / "stage", "job-fail-1", input_cols=["A", "NOPE"])
    handle = submit(spec, target)
    with pytest.raises(JobFailedError) as failure:
        handle.wait(timeout_s=180)
    message = str(failure.value)
    assert "'NOPE'" in message and "not found" in message  # the job's own error, from its log
    assert failure.value.status == "FAILED" and "NOPE" in failure.value.log_tail
    retry = submit(spec, target)
    assert not retry.reattached and retry.submission_id.endswith("-2")
    with pytest.raises(JobFailedError):
        retry.wait(timeout_s=180)
    with pytest.raises(ModelIntegrityError):
        read_published(spec)


def test_a_cancelled_job_publishes_nothing(target, parquet, tmp_path):
    spec = xgb_spec(
        parquet, tmp_path / "stage", "job-cancel-1", n_estimators=100_000, verbose_eval=50
    )
    handle = submit(spec, target)
    try:
        deadline = time.monotonic() + 120
        seen = ""
        while "[50]" not in seen:  # training is under way
            assert time.monotonic() < deadline, seen[-2000:]
            assert handle.status() in ("PENDING", "RUNNING"), seen[-2000:]
            seen += handle.logs()
            time.sleep(0.5)
        assert handle.cancel()
        with pytest.raises(JobStoppedError):
            handle.wait(timeout_s=60)
    finally:
        if handle.status() not in TERMINAL:
            handle.cancel()  # never leave a 100k-round job running for later tests
    with pytest.raises(ModelIntegrityError):
        read_published(spec)


def test_a_pytorch_job_whose_train_function_is_missing_fails_naming_it(target, parquet, tmp_path):
    """The job imports its train function on the cluster (a PyTorch job that finds it and
    trains: test_job_operators' deferred DAG, task train_torch)."""
    missing = TrainingSpec.from_dict(
        dict(
            framework="pytorch",
            request_id="job-torch-2",
            artifact_stage_location=str(tmp_path / "stage"),
            train_func="jobs_train_funcs:no_such_function",
            dataset_map={"train": {"path": parquet}},
            hyper_params={"features": FEATURES},
            scaling_config={"num_nodes": 1, "num_workers_per_node": 1},
        )
    )
    with pytest.raises(JobFailedError) as failure:
        submit(missing, target).wait(timeout_s=180)
    assert "no_such_function" in str(failure.value)


def test_bad_targets_and_specs_fail_before_any_job(parquet, tmp_path):
    with socket_free_port() as port:
        with pytest.raises(JobServerError) as no_server:
            submit(
                xgb_spec(parquet, tmp_path, "job-x"), JobTarget(address=f"http://127.0.0.1:{port}")
            )
    assert "8265" in str(no_server.value)
    with pytest.raises(ConfigError):
        JobTarget(address="ray://head:10001")
    with pytest.raises(ConfigError) as secret:
        JobTarget(
            address="http://h:8265",
            runtime_env={"env_vars": {"SNOWFLAKE_PASSWORD": "hunter2-never-shown"}},
        )
    assert "SNOWFLAKE_PASSWORD" in str(secret.value)
    assert "hunter2" not in str(secret.value)
    with pytest.raises(ConfigError):  # a remote cluster cannot publish to this machine's home
        submit(
            xgb_spec(parquet, tmp_path, "job-y", artifact_stage_location=None),
            JobTarget(address="http://127.0.0.1:1"),
        )


class socket_free_port:
    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        return None
