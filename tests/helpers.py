"""Shared test helpers: small data sets, a local Snowflake connection, and a way to see which
Snowpark sessions are still open. Fixtures that start services live in ``tests/conftest.py``."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = ["A", "B", "C"]
LABEL = "Y"


def temp_folder(prefix: str) -> str:
    """A new temporary folder removed when the test process exits (homes set at import)."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def seed_mlflow_registry(template: Path, path: Path) -> str:
    """Copy the empty registry ``template`` to ``path`` (unless a registry is there already);
    returns its ``sqlite:///`` URI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        shutil.copyfile(template, tmp)
        os.replace(tmp, path)
    return f"sqlite:///{path}"


def regression_table(rows: int = 400, seed: int = 0) -> pa.Table:
    """A linear regression problem over FEATURES with label LABEL (float64 columns)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES)))
    y = x @ np.array([1.5, -2.0, 0.5]) + rng.normal(scale=0.1, size=rows)
    return pa.table({**{f: x[:, i] for i, f in enumerate(FEATURES)}, LABEL: y})


def write_regression(path: Path, rows: int = 400, seed: int = 0) -> str:
    """``regression_table`` as one Parquet file at ``path``; returns the path as a string."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(regression_table(rows, seed), path)
    return str(path)


def snowpark_table(session, frame, name: str):
    """``frame`` saved as table ``name`` in a Snowpark local_testing session; returns the table.

    Built from rows with the column names as the schema: local testing turns a pandas float32
    frame into *string* columns, row by row (29 s for 20k x 9 here), while rows give typed
    DOUBLE/BIGINT columns, as a real table has, in a fifth of the time.
    """
    rows = list(frame.itertuples(index=False, name=None))
    session.create_dataframe(rows, schema=list(frame.columns)).write.save_as_table(
        name, mode="overwrite"
    )
    return session.table(name)


def local_snowflake_connections(*names: str) -> str:
    """A ``SNOWFLAKE_CONNECTIONS`` value (connections.toml's content) whose connections run on
    Snowpark's local emulation: no live account is reachable from the tests."""
    return "".join(
        f'[{n}]\naccount = "local"\nuser = "tester"\nlocal_testing = true\n' for n in names
    )


def open_sessions() -> set:
    """The Snowpark sessions open in this process right now (Snowpark's own registry, from
    which ``Session.close`` removes a session)."""
    from snowflake.snowpark import session

    return set(session._active_sessions)


@dataclass(frozen=True)
class TaskInstanceIdentity:
    """What a training operator reads from ``context['ti']`` when a test calls ``execute``
    outside a DAG run: a task instance's identity, and the XComs it pushes (kept in
    ``xcoms`` for the test to read; ``dag.test()`` tests use Airflow's own)."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    try_number: int = 1
    xcoms: dict = field(default_factory=dict, compare=False)

    def xcom_push(self, key: str, value) -> None:
        self.xcoms[key] = value


def kill_rank_once_checkpointed(stage: Path, rank: int = 1) -> tuple[threading.Thread, list[int]]:
    """Start a thread that SIGKILLs ``rank``'s process of the fit this process is running, from
    outside, once the run has a checkpoint on ``stage``; returns the thread and the list the
    killed pid is appended to."""
    from shardtrain.runtime import worker_group

    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            states = list(stage.glob("checkpoints/*/state.json"))
            busy = list(worker_group._busy)
            if states and busy:
                pid = busy[0].infos[rank]["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread, killed


REPO = Path(__file__).resolve().parents[1]


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


@contextmanager
def airflow_db_migrating(env: dict[str, str]):
    """``airflow db migrate`` (~20 s) in a subprocess while the block makes what else a fixture
    needs (the session's head, the MLflow template); it must have succeeded when the block ends."""
    migrate = subprocess.Popen(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield
        output, _ = migrate.communicate(timeout=300)
    finally:
        if migrate.poll() is None:
            migrate.kill()
            migrate.communicate()
    assert migrate.returncode == 0, output[-4000:]
