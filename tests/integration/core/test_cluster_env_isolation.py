"""The local Ray head starts from an allowlisted environment: what the process that starts
it holds (an Airflow task's database URL and JWT secret, its task context, a Prefect API
key, any token) never reaches the head, its monitor, a Ray job or a worker on it.

A real head in this test's own $SHARDTRAIN_HOME, started from this process with those
variables set, stopped at the end.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import psutil
import pytest

from shardtrain.runtime import local_cluster

# A real head of its own (not the session's) and a Ray job on it.
pytestmark = [pytest.mark.ray, pytest.mark.subprocess, pytest.mark.jobs]

#: What an Airflow task or a Prefect worker that happens to start the head has.
STARTER_SECRETS = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://u:pw@h/db",
    "AIRFLOW__API_AUTH__JWT_SECRET": "jwt-secret-8c1f0d",
    "AIRFLOW_CTX_DAG_ID": "the_first_dag_0b7e",
    "PREFECT_API_KEY": "pnu_prefect_key_5a2d",
    "MY_SERVICE_TOKEN": "service-token-93e4",
}
PLAIN = {"MY_PLAIN_SETTING": "plain-value-61c2", "SHARDTRAIN_PROBE_SETTING": "shardtrain-4d09"}

# A Ray job: prints its own environment, a task's and an actor's, as one JSON line.
PROBE = """
import json, os
import ray

ray.init()

@ray.remote(num_cpus=1)
def task_env():
    return dict(os.environ)

@ray.remote(num_cpus=0)
class Probe:
    def env(self):
        return dict(os.environ)

task = ray.get(task_env.remote())
actor = ray.get(Probe.remote().env.remote())
print("PROBE " + json.dumps({"job": dict(os.environ), "task": task, "actor": actor}), flush=True)
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    """This test's $SHARDTRAIN_HOME, with the starter's secrets in the environment; the head
    started there is stopped afterwards."""
    path = tmp_path / "home"
    monkeypatch.setenv("SHARDTRAIN_HOME", str(path))
    for name in ("RAY_ADDRESS", "SHARDTRAIN_CLUSTER", "SHARDTRAIN_CLUSTER_IDLE_S"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**STARTER_SECRETS, **PLAIN}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SHARDTRAIN_CLUSTER_ENV_ALLOW", "MY_PLAIN_SETTING")
    yield path
    local_cluster.stop()
    link = path / "cluster" / "ray"  # Ray's temp dir is under /tmp when the home is long
    if link.is_symlink():
        shutil.rmtree(link.resolve(), ignore_errors=True)


def _assert_clean(where: str, environ: dict[str, str]) -> None:
    text = json.dumps(environ)
    for name, value in STARTER_SECRETS.items():
        assert name not in environ, f"{where} has {name}"
        assert value not in text, f"{where} has the value of {name}"
    assert not [n for n in environ if n.startswith(("AIRFLOW", "PREFECT_"))], where
    for name, value in PLAIN.items():
        assert environ.get(name) == value, f"{where} lacks {name}"


def _run_job(record: local_cluster.LocalCluster, script) -> str:
    client = record.job_client()
    job = client.submit_job(entrypoint=f"python {script}")
    deadline = time.monotonic() + 180
    while str(client.get_job_status(job)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, client.get_job_logs(job)
        time.sleep(0.5)
    logs = client.get_job_logs(job)
    assert str(client.get_job_status(job)) == "SUCCEEDED", logs
    return logs


def test_the_head_its_jobs_and_workers_never_see_the_starters_secrets(home, tmp_path, caplog):
    caplog.set_level(logging.INFO, "shardtrain.runtime")
    began = time.monotonic()
    record = local_cluster.ensure(num_cpus=1)
    start_s = time.monotonic() - began

    # The start is logged before and after (with how long it took), then the leftover.
    lines = [r.getMessage() for r in caplog.records if r.name == "shardtrain.runtime"]
    assert lines[0] == (
        f"Starting a local Ray head (no RAY_ADDRESS and none running under {home}); "
        "this takes ~10 s"
    )
    assert lines[1].startswith(f"Started the local Ray head at {record.gcs_address} in ")
    took = float(lines[1].split(" in ")[1].split(" s ")[0])
    assert 0 < took <= start_s + 0.05  # rounded to 0.1 s
    assert lines[2] == local_cluster.left_running_message(record, exiting=False)
    assert "`shardtrain cluster stop`" in lines[2] and "after 1800 s" in lines[2]
    assert len(lines) == 3

    # The head's own processes and its monitor. Some of Ray's Python processes rename
    # themselves over their environment block (/proc shows it empty): those only count as
    # not holding the secrets.
    members = [p for p in psutil.process_iter() if _pgid(p.pid) == record.head_pgid]
    members.append(psutil.Process(record.monitor_pid))
    readable = set()
    for process in members:
        try:
            name, environ = process.name(), process.environ()
        except psutil.NoSuchProcess:
            continue  # a short-lived helper
        text = json.dumps(environ)
        assert not any(n in environ or v in text for n, v in STARTER_SECRETS.items()), name
        if environ:
            _assert_clean(f"head process {name}", environ)
            readable.add(name)
    assert {"gcs_server", "raylet"} <= readable, readable
    assert any("python" in name for name in readable), readable  # the monitor at least

    # A Ray job's driver, a task and an actor on the head.
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    logs = _run_job(record, script)
    [line] = [x for x in logs.splitlines() if x.startswith("PROBE ")]
    seen = json.loads(line.removeprefix("PROBE "))
    for where in ("job", "task", "actor"):
        _assert_clean(f"the {where}", seen[where])
    for value in STARTER_SECRETS.values():
        assert value not in logs

    # When this process exits with the head still running, it says so once more.
    caplog.clear()
    local_cluster._log_left_running(record, os.getpid())
    assert [r.getMessage() for r in caplog.records] == [
        local_cluster.left_running_message(record, exiting=True)
    ]
    caplog.clear()
    assert local_cluster.stop() == record
    local_cluster._log_left_running(record, os.getpid())  # stopped: nothing to say
    assert caplog.records == []


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
