"""Real Airflow for the provider tests: a migrated sqlite metadata DB in a temp AIRFLOW_HOME.

DAGs run as `python <dag file>` (which calls `dag.test()`), exactly as a user runs them, each
in its own process joining the local Ray head of their $SHARDTRAIN_HOME; tests then read the
real metadata DB.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class AirflowEnv:
    def __init__(self, home: Path, dags: Path, shardtrain_home: Path) -> None:
        self.home, self.dags, self.shardtrain_home = home, dags, shardtrain_home
        self.env = dict(
            os.environ,
            AIRFLOW_HOME=str(home),
            AIRFLOW__CORE__DAGS_FOLDER=str(dags),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            SHARDTRAIN_HOME=str(shardtrain_home),
            # Warm worker groups outlive a DAG run for the next one (idle groups give way at
            # once to a fit or job that needs their CPUs).
            SHARDTRAIN_WORKER_IDLE_S="120",
        )
        self.env.pop("RAY_ADDRESS", None)
        self.outputs: dict[str, str] = {}  # dag.test() streams the task logs to the console
        self.last_output = ""  # the latest run's: a failed task shows only there

    def run_dag(self, filename: str, extra_env: dict | None = None, timeout: int = 400):
        result = subprocess.run(
            [sys.executable, str(self.dags / filename)],
            cwd=REPO,
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-4000:])
        self.outputs[filename] = self.last_output = result.stdout + result.stderr
        return self.outputs[filename]

    def query(self, sql: str, *args):
        with sqlite3.connect(self.home / "airflow.db") as db:
            return db.execute(sql, args).fetchall()

    def xcom(self, dag_id: str, task_id: str, key: str = "return_value"):
        rows = self.query(
            "select value from xcom where dag_id=? and task_id=? and key=? order by run_id desc",
            dag_id,
            task_id,
            key,
        )
        assert rows, (f"no XCom {key} for {dag_id}.{task_id}", self.last_output[-4000:])
        return json.loads(rows[0][0])

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in (self.home / "logs").rglob("*") if p.is_file()
        )


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory, request):
    """Airflow with its own $SHARDTRAIN_HOME (stage, default registry, example data) whose
    local head is the session's: its ``cluster`` folder (record, lock, token) is the session
    home's, so DAG runs find and join that head as they would their own (starting a second
    head cost ~10 s and a core's tenth all session). The default registry starts as a copy of
    an empty one: MLflow's first-use creation is tests/core/test_registry*.py's subject.

    ``airflow db migrate`` runs while the session's head and registry template are made."""
    from tests.helpers import seed_mlflow_registry

    root = tmp_path_factory.mktemp("airflow")
    dags = root / "dags"
    shutil.copytree(REPO / "dags", dags)
    env = AirflowEnv(root / "home", dags, root / "shardtrain")
    migrate = subprocess.Popen(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        ray_head = request.getfixturevalue("ray_head")
        template = request.getfixturevalue("mlflow_template")
        output, _ = migrate.communicate(timeout=300)
    finally:
        if migrate.poll() is None:
            migrate.kill()
            migrate.communicate()
    assert migrate.returncode == 0, output[-4000:]
    env.shardtrain_home.mkdir()
    (env.shardtrain_home / "cluster").symlink_to(ray_head.cluster_dir, target_is_directory=True)
    seed_mlflow_registry(template, env.shardtrain_home / "mlflow" / "mlflow.db")
    return env
