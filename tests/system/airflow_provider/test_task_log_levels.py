"""Ray's and MLflow's info lines reach the Airflow task log at info, not at error.

Airflow's supervisor writes a task's stderr into its log at level error; Ray and MLflow write
their info lines to stderr through handlers of their own (MLflow prints its registry events).
Only a supervised task shows this, so the DAG runs with ``dag.test(use_executor=True)``: the
LocalExecutor runs each task in its own supervised process, which talks to a real execution
API server, and the test reads the task logs Airflow wrote (structlog JSON, one record a line).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import write_regression

DAG = """
import os

import pendulum
from airflow.sdk import DAG

from shardtrain_airflow.operators import RegisterModelOperator, XGBoostTrainOperator

with DAG("shardtrain_log_levels", schedule=None, start_date=pendulum.datetime(2026, 1, 1),
         catchup=False) as dag:
    common = dict(path=os.environ["LOG_LEVELS_DATA"], input_cols=["A", "B", "C"], label_col="Y",
                  n_estimators=3, verbose_eval=1,
                  scaling_config={"num_workers": 2, "num_cpu_per_worker": 1})
    # By address (plain ray.init: Ray's stderr handler) and the local head (no handler).
    by_address = XGBoostTrainOperator(task_id="train_by_address", ray_conn_id="ray_head",
                                      **common)
    local = XGBoostTrainOperator(task_id="train_local", **common)
    register = RegisterModelOperator(task_id="register", model=by_address.output,
                                     name="log_levels")
    by_address >> local >> register

if __name__ == "__main__":
    dag.test(use_executor=True)
"""

#: Lines Ray and MLflow write at info (or print as events), each checked per task.
RAY_INFO = "Connecting to existing Ray cluster at address"
MLFLOW_INFO = "Created version '"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def execution_api(airflow_env, tmp_path_factory):
    """The execution API a supervised task talks to (``airflow api-server --apps execution``),
    on a free loopback port; yields the environment that points tasks at it."""
    port = _free_port()
    env = {
        "AIRFLOW__API_AUTH__JWT_SECRET": "log-levels-test-secret",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__PARALLELISM": "1",
    }
    log = tmp_path_factory.mktemp("api") / "api-server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "airflow", "api-server", "--apps", "execution"]
            + ["--workers", "1", "--host", "127.0.0.1", "--port", str(port)],
            env={**airflow_env.env, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one below
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/execution/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        yield env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def task_log(airflow_env, task_id: str) -> list[dict]:
    """The records of the task's (only) log file."""
    folder = airflow_env.home / "logs" / "dag_id=shardtrain_log_levels"
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


def test_ray_and_mlflow_info_lines_are_info_in_the_task_log(
    airflow_env, execution_api, ray_head, tmp_path
):
    data = write_regression(tmp_path / "train.parquet", rows=400)
    host, port = ray_head.gcs_address.rsplit(":", 1)
    (airflow_env.dags / "log_levels_dag.py").write_text(DAG)
    airflow_env.run_dag(
        "log_levels_dag.py",
        {
            **execution_api,
            **ray_head.driver_env(),  # the token a plain ray.init(address=...) joins with
            "SHARDTRAIN_HOME": str(Path(ray_head.cluster_dir).parent),  # joins this head
            "AIRFLOW_CONN_RAY_HEAD": json.dumps({"conn_type": "ray", "host": host, "port": port}),
            "LOG_LEVELS_DATA": data,
        },
    )
    states = dict(
        airflow_env.query(
            "select task_id, state from task_instance where dag_id='shardtrain_log_levels'"
        )
    )
    assert states == dict.fromkeys(("train_by_address", "train_local", "register"), "success")

    for task_id in ("train_by_address", "train_local"):
        records = task_log(airflow_env, task_id)
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

    records = task_log(airflow_env, "register")
    assert errors_from_libraries(records) == []
    created = [r for r in records if str(r["event"]).startswith(MLFLOW_INFO)]
    assert [(r["level"], r["logger"]) for r in created] == [("info", "mlflow")]
