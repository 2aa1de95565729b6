"""The local head's environment allowlist (``runtime.cluster_env``) and the lines the local
head logs about itself, without starting one: no Ray, no subprocess, no socket."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace

import psutil
import pytest

from shardtrain import env
from shardtrain.errors import ConfigError
from shardtrain.runtime import cluster_env, local_cluster

#: What an Airflow task or a Prefect worker that starts the head has in its environment.
STARTER = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/airflow",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "UTC",
    "TMPDIR": "/tmp",
    "PYTHONPATH": "/opt/dags",
    "VIRTUAL_ENV": "/opt/venv",
    "LD_LIBRARY_PATH": "/usr/local/cuda/lib64",
    "XDG_CACHE_HOME": "/home/airflow/.cache",
    "SSL_CERT_FILE": "/etc/ssl/certs/ca.pem",
    "REQUESTS_CA_BUNDLE": "/etc/ssl/certs/ca.pem",
    "HTTPS_PROXY": "http://proxy:3128",
    "NO_PROXY": "localhost,127.0.0.1",
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
    "OPENBLAS_NUM_THREADS": "2",
    "CUDA_VISIBLE_DEVICES": "0",
    "NVIDIA_VISIBLE_DEVICES": "all",
    "NCCL_SOCKET_IFNAME": "eth0",
    "RAY_DEDUP_LOGS": "0",
    "SHARDTRAIN_HOME": "/data/shardtrain",
    "SHARDTRAIN_WORKER_IDLE_S": "60",
    # never
    "RAY_ADDRESS": "10.0.0.1:6379",
    "RAY_AUTH_TOKEN": "ray-token-value",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://u:pw@h/db",
    "AIRFLOW__API_AUTH__JWT_SECRET": "jwt-secret-value",
    "AIRFLOW__API__SECRET_KEY": "api-secret-value",
    "AIRFLOW_CTX_DAG_ID": "first_dag",
    "AIRFLOW_CTX_TASK_ID": "first_task",
    "AIRFLOW_HOME": "/opt/airflow",
    "AIRFLOW_CONN_WAREHOUSE": "snowflake://u:pw@acct",
    "PREFECT_API_KEY": "pnu_secret",
    "PREFECT_API_URL": "https://api.prefect.cloud",
    "MY_SERVICE_TOKEN": "service-token-value",
    "SHARDTRAIN_S3_SECRET": "shardtrain-secret-value",
    "RAY_REDIS_PASSWORD": "redis-password-value",
    "http_proxy": "http://user:proxy-pw@proxy:3128",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "UNRELATED_SETTING": "x",
}

KEPT = {
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "LD_LIBRARY_PATH",
    "XDG_CACHE_HOME",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "HTTPS_PROXY",
    "NO_PROXY",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "NCCL_SOCKET_IFNAME",
    "RAY_DEDUP_LOGS",
    "SHARDTRAIN_HOME",
    "SHARDTRAIN_WORKER_IDLE_S",
}


def test_the_head_keeps_what_ray_and_the_frameworks_need_and_nothing_else():
    kept = cluster_env.head_environment(STARTER)
    assert set(kept) == KEPT
    assert all(kept[name] == STARTER[name] for name in kept)
    text = json.dumps(kept)
    for secret in ("pw", "jwt-secret", "api-secret", "pnu_", "token-value", "first_dag"):
        assert secret not in text
    assert STARTER == {**STARTER}  # the caller's mapping is left as it was


def test_names_the_user_allows_pass_but_never_an_orchestrators_or_a_secret():
    kept = cluster_env.head_environment(STARTER, ["UNRELATED_SETTING", " "])
    assert set(kept) == KEPT | {"UNRELATED_SETTING"}
    for refused in (
        "MY_SERVICE_TOKEN",
        "AIRFLOW_CTX_DAG_ID",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "PREFECT_API_URL",
        "DB_PASSWORD",
        "OPENAI_API_KEY",
    ):
        with pytest.raises(ConfigError, match="its own environment or a connection") as error:
            cluster_env.head_environment(STARTER, ["UNRELATED_SETTING", refused])
        assert error.value.names == [refused]
        assert error.value.variable == "SHARDTRAIN_CLUSTER_ENV_ALLOW"


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        ("MY_SERVICE_TOKEN", True),
        ("SNOWFLAKE_PASSWORD", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("OPENAI_API_KEY", True),
        ("SENTRY_DSN", True),
        ("AIRFLOW_HOME", True),
        ("AIRFLOW_CTX_DAG_RUN_ID", True),
        ("AIRFLOW__CORE__EXECUTOR", True),
        ("PREFECT_API_URL", True),
        ("PATH", False),
        ("OMP_NUM_THREADS", False),
        ("SSL_CERT_FILE", False),
        ("RAY_AUTH_MODE", False),
        ("MONKEY_BUSINESS", False),
    ],
)
def test_what_the_head_never_gets(name, refused):
    """Secret names by shardtrain's one rule (``shardtrain.secrets``), and orchestrators'."""
    assert cluster_env.forbidden(name) is refused


def test_the_allow_setting_is_a_comma_separated_list(monkeypatch):
    monkeypatch.setenv("SHARDTRAIN_CLUSTER_ENV_ALLOW", " AWS_REGION, MY_SETTING,,")
    assert env.CLUSTER_ENV_ALLOW.get() == ("AWS_REGION", "MY_SETTING")
    monkeypatch.delenv("SHARDTRAIN_CLUSTER_ENV_ALLOW")
    assert env.CLUSTER_ENV_ALLOW.get() == ()
    assert env.CLUSTER_ENV_ALLOW in env.KNOBS


def test_a_secret_named_in_the_allow_setting_stops_the_start_before_any_process(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("SHARDTRAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SHARDTRAIN_CLUSTER_ENV_ALLOW", "MY_SERVICE_TOKEN")
    monkeypatch.setattr(local_cluster, "_launch", _no_launch)
    caplog.set_level(logging.INFO, "shardtrain.runtime")
    with pytest.raises(ConfigError, match="MY_SERVICE_TOKEN"):
        local_cluster.ensure(num_cpus=1)
    assert not (tmp_path / "home" / "cluster" / local_cluster.RECORD).exists()
    assert "Starting a local Ray head" not in caplog.text


def _no_launch(*args, **kwargs):
    raise AssertionError("no head may start")


def _record(tmp_path, pid: int, idle_s: float = 1800.0) -> local_cluster.LocalCluster:
    """A record whose 'GCS' is process ``pid`` (alive while it runs). Its process group is
    none (-1): stopping it, as the session's teardown does with any record it finds, never
    signals a process."""
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        started = time.time()
    folder = tmp_path / "home" / "cluster"
    folder.mkdir(parents=True, exist_ok=True)
    return local_cluster.LocalCluster(
        gcs_address="127.0.0.1:6390",
        dashboard_url="http://127.0.0.1:8290",
        head_pgid=-1,
        gcs_pid=pid,
        gcs_started=started,
        monitor_pid=None,
        num_cpus=1,
        idle_s=idle_s,
        temp_dir=str(folder / "ray"),
        cluster_dir=str(folder),
        started_at=started,
    )


def test_the_process_that_started_the_head_says_at_exit_that_it_runs_on(
    tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, "shardtrain.runtime")
    record = _record(tmp_path, os.getpid(), idle_s=900)
    monkeypatch.setenv("SHARDTRAIN_HOME", str(tmp_path / "home"))
    local_cluster._write_record(record)
    try:
        local_cluster._log_left_running(record, os.getpid())
    finally:
        (tmp_path / "home" / "cluster" / local_cluster.RECORD).unlink()  # stopped meanwhile
    [line] = [r.getMessage() for r in caplog.records]
    assert line == (
        f"This process (pid {os.getpid()}) exits and leaves the local Ray head it started at "
        "127.0.0.1:6390 running detached. It stops by itself after 900 s without jobs or "
        "connected drivers (SHARDTRAIN_CLUSTER_IDLE_S); `shardtrain cluster stop` "
        f"(SHARDTRAIN_HOME={tmp_path / 'home'}) stops it now"
    )
    assert caplog.records[0].name == "shardtrain.runtime"
    assert caplog.records[0].levelno == logging.INFO

    caplog.clear()
    local_cluster._log_left_running(record, os.getpid())  # the head was stopped: silent
    local_cluster._write_record(replace(record, gcs_pid=-1))  # replaced: silent
    try:
        local_cluster._log_left_running(record, os.getpid())
        local_cluster._write_record(record)
        local_cluster._log_left_running(record, os.getpid() + 1)  # a forked child: silent
    finally:
        (tmp_path / "home" / "cluster" / local_cluster.RECORD).unlink()
    assert caplog.records == []


def test_the_line_logged_when_a_head_starts_says_how_to_stop_it(tmp_path):
    record = _record(tmp_path, os.getpid())
    line = local_cluster.left_running_message(record, exiting=False)
    assert line.startswith(
        f"The local Ray head at 127.0.0.1:6390 runs detached: it outlives this process (pid "
        f"{os.getpid()}), which started it. It stops by itself after 1800 s"
    )
    assert "`shardtrain cluster stop`" in line and "SHARDTRAIN_CLUSTER_IDLE_S" in line
