"""Real Airflow for the provider tests: a migrated sqlite metadata DB in a temp AIRFLOW_HOME.

DAGs run as `python <dag file>` (which calls `dag.test()`), exactly as a user runs them, each
in its own process with its own local Ray; tests then read the real metadata DB.
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
            SHARDTRAIN_WORKER_IDLE_S="5",
        )
        self.env.pop("RAY_ADDRESS", None)
        self.outputs: dict[str, str] = {}  # dag.test() streams the task logs to the console

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
        self.outputs[filename] = result.stdout + result.stderr
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
        assert rows, f"no XCom {key} for {dag_id}.{task_id}"
        return json.loads(rows[0][0])

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in (self.home / "logs").rglob("*") if p.is_file()
        )


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("airflow")
    dags = root / "dags"
    shutil.copytree(REPO / "dags", dags)
    env = AirflowEnv(root / "home", dags, root / "shardtrain")
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env.env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return env
