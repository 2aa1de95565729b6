"""Issue 27 against real Airflow services: ``airflow api-server``, ``scheduler`` (LocalExecutor),
``dag-processor`` and ``triggerer`` on a sqlite metadata DB (Airflow 3 runs LocalExecutor on
sqlite), started once for the module, with the session's Ray head (same $SHARDTRAIN_HOME).

One DAG run holds both cases, trained at once on the head's 2 CPUs:

- ``in_process`` trains in its task process; marked failed through the REST API, Airflow's
  SIGTERM reaches ``on_kill`` (connecting to Ray no longer replaces its handler) and no stack
  dump of Ray's signal handler reaches the task log;
- ``deferred`` waits for its Ray job in the triggerer (``retries=0``); cleared through the REST
  API while its job runs, its next try starts a new job (never the stopped one) and succeeds.

And in no service's log: "XCom not found" (the links), a trigger blocking the event loop.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import FEATURES, write_regression

pytestmark = [pytest.mark.airflow, pytest.mark.subprocess, pytest.mark.jobs]

DAG_ID = "shardtrain_services"
SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")

DAG_FILE = """
import os
import pendulum
from airflow.sdk import DAG
from shardtrain_airflow.operators import XGBoostTrainOperator

common = dict(path=os.environ["SVC_DATA"], input_cols=os.environ["SVC_COLS"], label_col="Y",
              scaling_config={"num_workers": 1, "num_cpu_per_worker": 1},
              artifact_stage_location=os.environ["SVC_STAGE"], retries=0, poll_interval=0.5)
with DAG("shardtrain_services", schedule=None, start_date=pendulum.datetime(2026, 1, 1),
         catchup=False) as dag:
    XGBoostTrainOperator(task_id="deferred", deferrable=True, verbose_eval=100,
                         n_estimators=int(os.environ["SVC_DEFERRED_ROUNDS"]), **common)
    XGBoostTrainOperator(task_id="in_process", deferrable=False, run_as_job=False,
                         n_estimators=10_000_000, verbose_eval=50, **common)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Services:
    def __init__(self, home: Path, env: dict[str, str], port: int) -> None:
        self.home, self.env, self.port = home, env, port
        self.procs: dict[str, subprocess.Popen] = {}
        self.token = ""
        self.run_id = ""

    def start(self) -> None:
        for name in SERVICES:
            out = (self.home / f"{name}.log").open("w")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "airflow", name],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def service_log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def api(self, method: str, path: str, body: dict | None = None):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {self.token}"} if self.token else {}),
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def ti(self, task_id: str) -> dict:
        return self.api(
            "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{self.run_id}/taskInstances/{task_id}"
        )

    def task_log(self, task_id: str, attempt: int) -> str:
        folder = self.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={self.run_id}"
        # The try's own log, then the triggerer's (attempt=N.log.trigger.<id>.log).
        paths = sorted((folder / f"task_id={task_id}").glob(f"attempt={attempt}.log*"))
        return "\n".join(path.read_text(errors="replace") for path in paths)

    def wait_for(self, what: str, check, timeout: float, poll: float = 0.5):
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            for name, proc in self.procs.items():
                assert proc.poll() is None, f"{name} exited: {self.service_log(name)[-3000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(poll)


@pytest.fixture(scope="module")
def services(ray_head, tmp_path_factory):
    root = tmp_path_factory.mktemp("airflow_services")
    home, dags = root / "home", root / "dags"
    home.mkdir()
    dags.mkdir()
    (dags / "services_dag.py").write_text(DAG_FILE)
    port = _free_port()
    env = dict(
        os.environ,
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__PARALLELISM="4",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__WORKERS="1",
        AIRFLOW__API_AUTH__JWT_SECRET="shardtrain-system-test-secret",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
        AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC="1",
        SHARDTRAIN_HOME=os.environ["SHARDTRAIN_HOME"],  # the session's head
        SHARDTRAIN_WORKER_IDLE_S="0",
        SVC_DATA=write_regression(root / "train.parquet", rows=4_000),
        SVC_COLS=",".join(FEATURES),
        SVC_STAGE=str(root / "stage"),
        SVC_DEFERRED_ROUNDS="2000",  # cleared while it runs; the next try resumes it
    )
    env.pop("RAY_ADDRESS", None)
    started = time.monotonic()
    migrate = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    svc = Services(home, env, port)
    svc.start()
    try:

        def token():
            try:
                return svc.api("GET", "/auth/token")["access_token"]
            except OSError:
                return None

        svc.token = svc.wait_for("the API server", token, timeout=120)

        def parsed():
            try:
                return svc.api("GET", f"/api/v2/dags/{DAG_ID}")
            except OSError:
                return None

        svc.wait_for("the DAG to be parsed", parsed, timeout=120)
        run = svc.api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {}})
        svc.run_id = run["dag_run_id"]
        print(f"services up and the DAG run triggered in {time.monotonic() - started:.1f} s")
        yield svc
    finally:
        svc.stop()
        for job in ray_head.job_client().list_jobs():  # no job of this module outlives it
            if DAG_ID in (job.submission_id or "") and str(job.status) in ("PENDING", "RUNNING"):
                ray_head.job_client().stop_job(job.submission_id)
        shutil.rmtree(home / "logs", ignore_errors=True) if os.environ.get("CI") else None


def _training(log: str) -> bool:
    """A round's metrics line in the task log (JSON lines: its tab is written ``\\t``)."""
    return bool(re.search(r"\[[1-9]\d*\](\t|\\t)", log))


def test_clearing_a_deferred_task_starts_a_new_job_that_succeeds(services, ray_head):
    def running_job():
        return [
            j
            for j in ray_head.job_client().list_jobs()
            if f"{DAG_ID}__" in (j.submission_id or "") and str(j.status) == "RUNNING"
        ]

    services.wait_for(
        "deferred to wait for its running job in the triggerer",
        lambda: services.ti("deferred")["state"] == "deferred" and running_job(),
        timeout=150,
    )
    cleared = services.api(
        "POST",
        f"/api/v2/dags/{DAG_ID}/clearTaskInstances",
        {
            "dry_run": False,
            "dag_run_id": services.run_id,
            "task_ids": ["deferred"],
            "only_failed": False,
            "reset_dag_runs": True,
        },
    )
    assert cleared["total_entries"] == 1, cleared
    ti = services.wait_for(
        "the cleared try to succeed",
        lambda: (ti := services.ti("deferred"))["state"] in ("success", "failed") and ti,
        timeout=150,
        poll=1,
    )
    first, second = services.task_log("deferred", 1), services.task_log("deferred", 2)
    assert ti["state"] == "success", second[-4000:]
    assert ti["try_number"] == 2
    assert "submitted Ray job" in second and "reattached" not in second, second[-4000:]
    assert "JobStoppedError" not in second
    jobs = {
        j.submission_id: str(j.status)
        for j in ray_head.job_client().list_jobs()
        if DAG_ID in (j.submission_id or "")
    }
    by_attempt = sorted(s for s in jobs if s.rsplit("-", 1)[-1].isdigit())
    assert [jobs[s] for s in by_attempt] == ["STOPPED", "SUCCEEDED"], jobs
    assert f"{by_attempt[0]}-stop" in jobs  # the stop the trigger's on_kill recorded
    # The trigger's on_kill, then once the job had ended, its outcome: in the try's log, or in
    # the triggerer's when Airflow 3.3 cancelled on_kill again at its next sync (~1 s later).
    assert f"the task was killed: stopping Ray job {by_attempt[0]}" in first, first[-3000:]
    stopped = f"stopped Ray job {by_attempt[0]} "
    assert stopped in first or stopped in services.service_log("triggerer")
    # Each job's log forwarded once, its entrypoint line naming the request, not the spec.
    for log in (first, second):
        assert log.count("Running entrypoint for job") == 1, log[-3000:]
        assert "input_cols" not in log


def test_marking_an_in_process_task_failed_runs_on_kill(services):
    services.wait_for(
        "in_process to train", lambda: _training(services.task_log("in_process", 1)), timeout=120
    )
    services.api(
        "PATCH",
        f"/api/v2/dags/{DAG_ID}/dagRuns/{services.run_id}/taskInstances/in_process",
        {"new_state": "failed"},
    )
    log = services.wait_for(
        "on_kill in the task log",
        lambda: (text := services.task_log("in_process", 1)) and "on_kill:" in text and text,
        timeout=30,
    )
    assert "on_kill: stopping this process's Ray workers" in log
    # Ray's native handler would have dumped the stack (Airflow logs stderr at ERROR).
    assert "SIGTERM received" not in log and "PC: @" not in log, log[-3000:]
    assert services.ti("in_process")["state"] == "failed"


def _all_logs(services) -> dict[str, str]:
    logs = {name: services.service_log(name) for name in SERVICES}
    for attempt_log in services.home.joinpath("logs").rglob("*.log"):
        logs[str(attempt_log)] = attempt_log.read_text(errors="replace")
    return logs


def test_no_service_or_task_logs_a_missing_xcom(services):
    for name, text in _all_logs(services).items():
        assert "XCom not found" not in text, (name, text[-3000:])


#: The longest block of the triggerer's event loop this module accepts. Airflow's watchdog
#: sleeps 0.1 s and warns past 0.2 s, so a single 0.1 s scheduling gap on this 2-core machine
#: (four Airflow services, the Ray head and a training job at once; py-spy showed the
#: triggerer idle then) trips its warning. The trigger's own stalls are bounded at 0.15 s, in
#: a cold interpreter, by tests/integration/airflow_provider/test_trigger_event_loop.py; the
#: block measured before this fix was 0.7-0.9 s at the trigger's start.
MAX_BLOCKED_S = 0.5
BLOCKED = re.compile(r"Triggerer's async thread was blocked for ([0-9.]+) seconds")


def test_no_trigger_blocks_the_triggerers_event_loop(services):
    log = services.service_log("triggerer")
    blocked = [float(s) for s in BLOCKED.findall(log)]
    assert all(s < MAX_BLOCKED_S for s in blocked), (blocked, log[-3000:])
