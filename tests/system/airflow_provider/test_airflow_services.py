"""Issue 27 against real Airflow services: ``airflow api-server``, ``scheduler`` (LocalExecutor),
``dag-processor`` and ``triggerer`` on a sqlite metadata DB (Airflow 3 runs LocalExecutor on
sqlite), started once for the module, with the session's Ray head (same $SHARDTRAIN_HOME).
Every case of the module runs on these services; two DAG runs are triggered at once when they
are up and trained side by side on the head's 2 CPUs.

``shardtrain_services``:

- ``in_process`` trains in its task process; marked failed through the REST API, Airflow's
  SIGTERM reaches ``on_kill`` (connecting to Ray no longer replaces its handler) and no stack
  dump of Ray's signal handler reaches the task log;
- ``deferred`` waits for its Ray job in the triggerer (``retries=0``); cleared through the REST
  API while its job runs, its next try starts a new job (never the stopped one); the
  triggerer is then restarted while that try waits, and the trigger created again forwards
  the job's log from where the previous one stopped (no line twice); the try succeeds;
- ``killed`` waits for its Ray job in its worker (``retries=1``); its task process is killed
  (SIGKILL: no ``on_kill``) while the job runs, and the retry reattaches to the same job: one
  Ray job, the model published once, the job's log forwarded once across the two tries.

``shardtrain_log_levels`` (by a Ray address, on the local head, then registering the model in
MLflow): Ray's and MLflow's info lines reach the task log at info, not at error (Airflow's
supervisor writes a task's stderr at error; they write their info lines to stderr).

And in no service's log nor the task log of a successful try: an ERROR line (the failures the
module provokes excepted), "XCom not found" (the links), a trigger blocking the event loop.

The tests run in file order, each acting while the others' jobs run: a test that waits for
the end of a case comes after those that must act while its jobs still run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psutil
import pytest

from tests.helpers import FEATURES, airflow_db_migrating, seed_mlflow_registry, write_regression

pytestmark = [pytest.mark.airflow, pytest.mark.subprocess, pytest.mark.jobs]

DAG_ID = "shardtrain_services"
LOG_LEVELS = "shardtrain_log_levels"
SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")

DAG_FILE = """
import datetime
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
    in_process = XGBoostTrainOperator(task_id="in_process", deferrable=False,
                                      run_as_job=False, n_estimators=10_000_000,
                                      verbose_eval=50, **common)
    # After in_process (marked failed): never holding the CPU in_process waits for.
    killed = XGBoostTrainOperator(task_id="killed", deferrable=False, run_as_job=True,
                                  verbose_eval=100, trigger_rule="all_done",
                                  n_estimators=int(os.environ["SVC_KILLED_ROUNDS"]),
                                  **common | dict(retries=1, retry_delay=datetime.timedelta(0)))
    in_process >> killed
"""

LOG_LEVELS_DAG = """
import os

import pendulum
from airflow.sdk import DAG

from shardtrain_airflow.operators import RegisterModelOperator, XGBoostTrainOperator

with DAG("shardtrain_log_levels", schedule=None, start_date=pendulum.datetime(2026, 1, 1),
         catchup=False) as dag:
    common = dict(path=os.environ["LOG_LEVELS_DATA"], input_cols=["A", "B", "C"], label_col="Y",
                  n_estimators=3, verbose_eval=1,
                  scaling_config={"num_workers": 1, "num_cpu_per_worker": 1})
    # By address (plain ray.init: Ray's stderr handler) and the local head (no handler).
    by_address = XGBoostTrainOperator(task_id="train_by_address", ray_conn_id="ray_head",
                                      **common)
    local = XGBoostTrainOperator(task_id="train_local", **common)
    register = RegisterModelOperator(task_id="register", model=by_address.output,
                                     name="log_levels", registry=os.environ["SVC_REGISTRY"])
    by_address >> local >> register
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
        self.run_ids: dict[str, str] = {}
        self.before_restart: list[str] = []  # what the trigger forwarded before the restart

    def start(self, names=SERVICES) -> None:
        for name in names:
            out = (self.home / f"{name}.log").open("a")  # a restarted service appends
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "airflow", name],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, names=SERVICES) -> None:
        procs = [self.procs[name] for name in names if name in self.procs]
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def restart(self, name: str) -> None:
        """Stop the service (SIGTERM: it exits gracefully) and start a new process of it."""
        self.stop((name,))
        self.start((name,))

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

    def ti(self, task_id: str, dag_id: str = DAG_ID) -> dict:
        return self.api(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{self.run_ids[dag_id]}/taskInstances/{task_id}"
        )

    def task_log(self, task_id: str, attempt: int, dag_id: str = DAG_ID) -> str:
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={self.run_ids[dag_id]}"
        # The try's own log, then the triggerer's (attempt=N.log.trigger.<id>.log).
        paths = sorted((folder / f"task_id={task_id}").glob(f"attempt={attempt}.log*"))
        return "\n".join(path.read_text(errors="replace") for path in paths)

    def query(self, sql: str, *args):
        with sqlite3.connect(self.home / "airflow.db") as db:
            return db.execute(sql, args).fetchall()

    def finished(self, task: str, what: str, timeout: float) -> dict:
        """The task instance of ``task`` once it has succeeded or failed."""
        return self.wait_for(
            what,
            lambda: (ti := self.ti(task))["state"] in ("success", "failed") and ti,
            timeout=timeout,
            poll=1,
        )

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
def services(ray_head, tmp_path_factory, request):
    root = tmp_path_factory.mktemp("airflow_services")
    home, dags = root / "home", root / "dags"
    home.mkdir()
    dags.mkdir()
    (dags / "services_dag.py").write_text(DAG_FILE)
    (dags / "log_levels_dag.py").write_text(LOG_LEVELS_DAG)
    port = _free_port()
    host, gcs_port = ray_head.gcs_address.rsplit(":", 1)
    driver_env = ray_head.driver_env()
    env = dict(
        os.environ,
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__PARALLELISM="6",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        AIRFLOW__API__PORT=str(port),
        # The scheduler's and the triggerer's log servers: ports of their own (8793 and 8794
        # by default, on all addresses: a session beside this one would make them fail).
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(_free_port()),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(_free_port()),
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__WORKERS="1",
        # A task's supervisor waits this long for the execution API (one worker on sqlite)
        # before it retries; a retried start finds its try already running and fails it (seen
        # with four tasks starting at once on a loaded 2-core machine).
        AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT="60",
        AIRFLOW__API_AUTH__JWT_SECRET="shardtrain-system-test-secret",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
        AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC="1",
        SHARDTRAIN_HOME=os.environ["SHARDTRAIN_HOME"],  # the session's head
        SHARDTRAIN_WORKER_IDLE_S="0",
        SVC_DATA=write_regression(root / "train.parquet", rows=4_000),
        SVC_COLS=",".join(FEATURES),
        SVC_STAGE=str(root / "stage"),
        SVC_DEFERRED_ROUNDS="3000",  # cleared while it runs; the next try resumes it
        SVC_KILLED_ROUNDS="1500",  # its task process killed while it runs; reattached
        # shardtrain_log_levels: the ray_head connection joins by the head's GCS address with
        # a plain ray.init (the token from its file); the model goes to a fresh registry.
        AIRFLOW_CONN_RAY_HEAD=json.dumps({"conn_type": "ray", "host": host, "port": gcs_port}),
        RAY_AUTH_MODE=driver_env["RAY_AUTH_MODE"],
        RAY_AUTH_TOKEN_PATH=driver_env["RAY_AUTH_TOKEN_PATH"],
        LOG_LEVELS_DATA=write_regression(root / "log_levels.parquet", rows=400),
    )
    env.pop("RAY_ADDRESS", None)
    started = time.monotonic()
    with airflow_db_migrating(env):  # the empty MLflow registry is made (once a session) meanwhile
        template = request.getfixturevalue("mlflow_template")
    env["SVC_REGISTRY"] = seed_mlflow_registry(template, root / "mlflow" / "mlflow.db")
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
                return all(svc.api("GET", f"/api/v2/dags/{d}") for d in (DAG_ID, LOG_LEVELS))
            except OSError:
                return None

        svc.wait_for("the DAGs to be parsed", parsed, timeout=120)
        for dag_id in (DAG_ID, LOG_LEVELS):
            run = svc.api(
                "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": {}}
            )
            svc.run_ids[dag_id] = run["dag_run_id"]
        svc.run_id = svc.run_ids[DAG_ID]
        print(f"services up and the DAG runs triggered in {time.monotonic() - started:.1f} s")
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


def _records(text: str) -> list[dict]:
    """The structlog JSON records of task log text (other lines skipped)."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "event" in record:
            records.append(record)
    return records


def _forwarded(text: str) -> list[str]:
    """The job log lines forwarded into task log text (``[ray job] <line>``)."""
    return [
        str(r["event"]).removeprefix("[ray job] ")
        for r in _records(text)
        if str(r["event"]).startswith("[ray job] ")
    ]


def _jobs(ray_head, task_id: str) -> dict[str, str]:
    """submission id -> status of the jobs of this module's ``task_id``."""
    return {
        j.submission_id: str(j.status)
        for j in ray_head.job_client().list_jobs()
        if f"{DAG_ID}__" in (j.submission_id or "") and f"__{task_id}-" in j.submission_id
    }


def _forwarded_at_most_once(forwarded: list[str], job_log: str) -> None:
    """No line of the job's log forwarded more often than the job wrote it."""
    from shardtrain.jobs.conventions import clean_log_line

    written = Counter(clean_log_line(line) for line in job_log.splitlines())
    twice = {line: n for line, n in Counter(forwarded).items() if n > written[line]}
    assert not twice, twice


def test_clearing_a_deferred_task_starts_a_new_job(services, ray_head):
    """Cleared while its job runs: the trigger's on_kill stops the job (and records the
    stop), and the next try starts a new job, never reattaching to the stopped one."""

    def running_job():
        return [s for s, status in _jobs(ray_head, "deferred").items() if status == "RUNNING"]

    services.wait_for(
        "deferred to wait for its running job in the triggerer",
        lambda: services.ti("deferred")["state"] == "deferred" and running_job(),
        timeout=120,
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

    def deferred_again():
        ti = services.ti("deferred")
        assert ti["state"] != "failed", services.task_log("deferred", ti["try_number"])[-4000:]
        jobs = _jobs(ray_head, "deferred")
        return ti["try_number"] == 2 and ti["state"] == "deferred" and len(jobs) == 3 and jobs

    jobs = services.wait_for("the cleared try to defer on a new job", deferred_again, timeout=55)
    first, second = services.task_log("deferred", 1), services.task_log("deferred", 2)
    assert "submitted Ray job" in second and "reattached" not in second, second[-4000:]
    by_attempt = sorted(s for s in jobs if s.rsplit("-", 1)[-1].isdigit())
    assert jobs[by_attempt[0]] == "STOPPED", jobs
    assert f"{by_attempt[0]}-stop" in jobs  # the stop the trigger's on_kill recorded
    # The trigger's on_kill, then once the job had ended, its outcome: in the try's log, or in
    # the triggerer's when Airflow 3.3 cancelled on_kill again at its next sync (~1 s later).
    assert f"the task was killed: stopping Ray job {by_attempt[0]}" in first, first[-3000:]
    stopped = f"stopped Ray job {by_attempt[0]} "
    assert stopped in first or stopped in services.service_log("triggerer")


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


def test_the_triggerer_restarts_while_the_cleared_try_waits(services):
    """The cleared try's trigger has forwarded training lines of its job when the triggerer
    stops (SIGTERM: its triggers are cancelled); a new triggerer creates the trigger again
    from its kwargs (the log offset at deferral). What it forwarded: in
    test_the_restarted_trigger_forwarded_no_line_twice_and_the_try_succeeds, which waits for
    the try's end (the kill case acts meanwhile)."""

    def forwarding():
        ti = services.ti("deferred")
        return ti["state"] == "deferred" and _training(services.task_log("deferred", 2))

    services.wait_for("the new job's training log in the trigger's", forwarding, timeout=40)
    services.before_restart = _forwarded(services.task_log("deferred", 2))
    services.restart("triggerer")


def test_killing_a_task_process_mid_job_retries_onto_the_same_job(services, ray_head):
    """SIGKILL (no on_kill): the job runs on and the retry reattaches to it (the rest of the
    case, once the retry has succeeded, in test_the_killed_tasks_model_arrives_once)."""
    ti = services.wait_for(
        "killed to forward its job's training log",
        lambda: (
            (ti := services.ti("killed"))["pid"]
            and _training(services.task_log("killed", 1))
            and ti
        ),
        timeout=90,
    )
    (sid,) = _jobs(ray_head, "killed")
    # The try's own process, running under the scheduler's LocalExecutor: never another.
    assert ti["state"] == "running" and ti["try_number"] == 1, ti
    assert services.procs["scheduler"].pid in {p.pid for p in psutil.Process(ti["pid"]).parents()}
    os.kill(ti["pid"], signal.SIGKILL)
    second = services.wait_for(
        "the retry to reattach",
        lambda: (log := services.task_log("killed", 2)) and "Ray job" in log and log,
        timeout=50,
    )
    assert f"reattached to Ray job {sid}" in second, second[-4000:]
    assert services.ti("killed")["try_number"] == 2
    assert list(_jobs(ray_head, "killed")) == [sid]  # no stop, no other job


def test_the_restarted_trigger_forwarded_no_line_twice_and_the_try_succeeds(services, ray_head):
    """The trigger created again resumed from the offset the previous one recorded; the
    cleared try succeeds with the one new job."""
    before = services.before_restart
    ti = services.finished("deferred", "the cleared try to succeed", timeout=55)
    first, second = services.task_log("deferred", 1), services.task_log("deferred", 2)
    assert ti["state"] == "success", second[-4000:]
    assert ti["try_number"] == 2
    assert "JobStoppedError" not in second and "reattached" not in second
    jobs = _jobs(ray_head, "deferred")
    by_attempt = sorted(s for s in jobs if s.rsplit("-", 1)[-1].isdigit())
    assert [jobs[s] for s in by_attempt] == ["STOPPED", "SUCCEEDED"], jobs
    assert f"resuming the log of Ray job {by_attempt[1]} at character" in second, second[-3000:]
    forwarded = _forwarded(second)
    assert forwarded[: len(before)] == before and len(forwarded) > len(before)
    _forwarded_at_most_once(forwarded, ray_head.job_client().get_job_logs(by_attempt[1]))
    # Each job's log forwarded once, its entrypoint line naming the request, not the spec.
    for log in (first, second):
        assert log.count("Running entrypoint for job") == 1, log[-3000:]
        assert "input_cols" not in log


def test_the_killed_tasks_model_arrives_once(services, ray_head):
    """The retry of the killed task (test_killing_a_task_process_mid_job_retries_onto_the_same_job)
    succeeds on the one job: its model published once, the job's log forwarded once across
    the two tries (the retry goes on from the offset in the task's state store)."""
    ti = services.finished("killed", "the retry to succeed", timeout=50)
    first, second = services.task_log("killed", 1), services.task_log("killed", 2)
    assert ti["state"] == "success" and ti["try_number"] == 2, second[-4000:]
    ((sid, status),) = _jobs(ray_head, "killed").items()
    assert status == "SUCCEEDED"
    xcom = services.api(
        "GET",
        f"/api/v2/dags/{DAG_ID}/dagRuns/{services.run_id}/taskInstances/killed/xcomEntries/"
        "return_value",
    )
    value = xcom["value"]
    artifact = value if isinstance(value, dict) else json.loads(value)
    assert artifact["request_id"] in sid
    from shardtrain import ModelArtifact, load_model

    rounds = int(services.env["SVC_KILLED_ROUNDS"])
    assert load_model(ModelArtifact.from_dict(artifact)).num_boosted_rounds() == rounds
    forwarded = _forwarded(first) + _forwarded(second)
    published = [line for line in forwarded if "model published to" in line]
    assert len(published) == 1 and artifact["uri"] in published[0], published
    assert sum("Running entrypoint for job" in line for line in forwarded) == 1
    _forwarded_at_most_once(forwarded, ray_head.job_client().get_job_logs(sid))


# -- Ray's and MLflow's info lines in the task log ---------------------------------------------

#: Lines Ray and MLflow write at info (or print as events), each checked per task.
RAY_INFO = "Connecting to existing Ray cluster at address"
MLFLOW_INFO = "Created version '"


def log_levels_task_log(services, task_id: str) -> list[dict]:
    """The records of the task's (only) log file."""
    folder = services.home / "logs" / f"dag_id={LOG_LEVELS}"
    files = list(folder.glob(f"run_id=*/task_id={task_id}/attempt=*.log"))
    assert len(files) == 1, files
    return [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]


def errors_from_libraries(records: list[dict]) -> list[dict]:
    """Error records that are Ray's or MLflow's own lines: from their loggers, or their
    formatted lines (``<time>\\tINFO worker.py:...``, ``... INFO mlflow...``) and events on
    stderr."""
    return [
        r
        for r in records
        if r["level"] in ("error", "critical")
        and (
            r.get("logger", "").startswith(("ray", "mlflow"))
            or any(
                text in str(r["event"])
                for text in ("\tINFO ", " INFO mlflow", RAY_INFO, MLFLOW_INFO, "Registered model")
            )
        )
    ]


def test_ray_and_mlflow_info_lines_are_info_in_the_task_log(services):
    """Only a supervised task shows it: the scheduler's LocalExecutor runs each task in its
    own supervised process, and the test reads the task logs Airflow wrote (structlog JSON,
    one record a line)."""

    def ended():
        return {
            task: services.ti(task, LOG_LEVELS)["state"]
            for task in ("train_by_address", "train_local", "register")
        }

    services.wait_for(
        "the log levels DAG run to end",
        lambda: set(ended().values()) <= {"success", "failed", "upstream_failed", "skipped"},
        timeout=60,
        poll=1,
    )
    states = dict(
        services.query(f"select task_id, state from task_instance where dag_id='{LOG_LEVELS}'")
    )
    assert states == dict.fromkeys(("train_by_address", "train_local", "register"), "success")

    for task_id in ("train_by_address", "train_local"):
        records = log_levels_task_log(services, task_id)
        assert errors_from_libraries(records) == [], task_id
        ray_lines = [r for r in records if str(r["event"]).startswith(RAY_INFO)]
        # once, at info, under Ray's own logger (by address: was error; local head: was lost)
        assert [(r["level"], r["logger"]) for r in ray_lines] == [
            ("info", "ray._private.worker")
        ], task_id
        # no colour codes anywhere (Ray's dashboard line had them), worker lines included
        assert not [r for r in records if "\x1b[" in str(r["event"])], task_id
        # worker lines (stdout; a reused worker may print none) are info
        workers = [r for r in records if str(r["event"]).startswith("(TrainWorker(rank=")]
        assert {r["level"] for r in workers} <= {"info"}, task_id
        # each round's metrics once
        for round_ in (1, 2, 3):
            metric = [r for r in records if str(r["event"]).startswith(f"[{round_}]\ttrain-rmse")]
            assert len(metric) == 1, (task_id, round_, metric)

    records = log_levels_task_log(services, "register")
    assert errors_from_libraries(records) == []
    created = [r for r in records if str(r["event"]).startswith(MLFLOW_INFO)]
    assert [(r["level"], r["logger"]) for r in created] == [("info", "mlflow")]


# -- every log of the session ------------------------------------------------------------------


def _all_logs(services) -> dict[str, str]:
    logs = {name: services.service_log(name) for name in SERVICES}
    for attempt_log in services.home.joinpath("logs").rglob("*.log"):
        logs[str(attempt_log)] = attempt_log.read_text(errors="replace")
    return logs


#: An ERROR line of a service's log: its console renderer's ``[error    ]`` (or critical), the
#: standard library's ``ERROR`` records, a task's JSON records echoed.
ERROR_LINE = re.compile(
    r"\[(error|critical)\s*\]|\b(ERROR|CRITICAL)\b|\"level\":\s*\"(error|critical)\""
)
#: The tries that fail by the module's doing (marked failed, cleared, killed): their task logs
#: are not checked, and a service's ERROR line that names one of them (its ti_id) is theirs.
FAILED_TRIES = {("in_process", 1), ("deferred", 1), ("killed", 1)}


def _failed_ti_ids(services) -> set[str]:
    """The ti_id of each of FAILED_TRIES (every record of a try's log carries it)."""
    ids = set()
    for task, attempt in FAILED_TRIES:
        records = _records(services.task_log(task, attempt))
        ids |= {r["ti_id"] for r in records if r.get("ti_id")}
    assert len(ids) == len(FAILED_TRIES), ids
    return ids


def _answer_to_a_killed_try(log: list[str], at: int, failed: set[str]) -> bool:
    """Whether ``log[at]`` is a task supervisor's "Unhandled exception while handling task
    request" that failed with a broken pipe (its task process had a request in flight when
    the module SIGKILLed it: the answer had nobody to go to), the supervisor's next words
    being that its workload, one of the failed tries, ended by SIGKILL. The line names no
    ti_id, so the try is told by what follows."""
    if "Unhandled exception while handling task request" not in log[at]:
        return False
    after = log[at + 1 : at + 12]
    if not any(line.startswith("BrokenPipeError") for line in after):
        return False
    return any(
        "Workload finished" in line
        and "SIGKILL" in line
        and any(f"workload_id={ti_id}" in line for ti_id in failed)
        for line in log[at + 1 : at + 16]
    )


def _error_lines(services) -> dict[str, list[str]]:
    """ERROR lines of every service's log and of every task log of a try that did not fail
    by the module's doing, but those about the failed tries."""
    failed = _failed_ti_ids(services)
    found = {}
    for name in SERVICES:
        log = services.service_log(name).splitlines()
        lines = [
            line
            for at, line in enumerate(log)
            if ERROR_LINE.search(line)
            and not any(ti_id in line for ti_id in failed)
            and not _answer_to_a_killed_try(log, at, failed)
        ]
        if lines:
            found[name] = lines
    for path in services.home.joinpath("logs").rglob("attempt=*.log*"):
        task = re.search(r"task_id=([^/]+)", str(path)).group(1)
        attempt = int(re.search(r"attempt=(\d+)", path.name).group(1))
        if "dag_id=shardtrain_services" in str(path) and (task, attempt) in FAILED_TRIES:
            continue
        text = path.read_text(errors="replace")
        lines = [r for r in _records(text) if r.get("level") in ("error", "critical")]
        if lines:
            found[str(path)] = [json.dumps(r)[:1500] for r in lines]
    return found


def test_no_log_has_an_error_line_that_is_not_a_provoked_failure(services):
    """Every service's log and the task log of every try that was not marked failed,
    cleared or killed: no ERROR line, but those the module's failures cause."""
    found = _error_lines(services)
    assert not found, json.dumps(found, indent=1)[:20000]


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
