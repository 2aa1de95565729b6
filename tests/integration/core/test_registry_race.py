"""The embedded MLflow registry under concurrent first use: four processes register into a
fresh sqlite registry at the same moment (two DAG runs doing this once failed with
``sqlite3.OperationalError: duplicate column name: step`` while MLflow migrated the new
database twice)."""

from __future__ import annotations

import multiprocessing
import sqlite3

import numpy as np
import xgboost as xgb

from shardtrain.model.artifact import ModelArtifact
from shardtrain.model.publish import publish_model

PROCESSES = 4


def _register(home: str, payload: dict, barrier, results) -> None:
    import os

    import mlflow  # noqa: F401  (imported before the barrier, not inside the race)

    from shardtrain.model.registry import register_model

    os.environ["SHARDTRAIN_HOME"] = home
    barrier.wait(timeout=180)  # all four start registering at the same moment
    try:
        registered = register_model(ModelArtifact.from_dict(payload), name="raced")
        results.put(("ok", registered.version, registered.request_id))
    except BaseException as exc:  # reported to the test, which shows it
        results.put(("error", f"{type(exc).__name__}: {exc}", payload["request_id"]))


def test_four_processes_register_into_a_fresh_registry_at_once(tmp_path):
    x = np.random.default_rng(0).random((200, 2)).astype(np.float32)
    payloads = []
    for i in range(PROCESSES):
        run = tmp_path / f"run{i}"
        run.mkdir()
        booster = xgb.train({"max_depth": 2}, xgb.DMatrix(x, label=x[:, 0] * i), 3)
        booster.save_model(str(run / "model.ubj"))
        artifact = publish_model(
            run,
            framework="xgboost",
            stage=str(tmp_path / "stage"),
            model_file="model.ubj",
            input_cols=["a", "b"],
            request_id=f"race-{i}",
        )
        payloads.append(artifact.to_dict())
    home = tmp_path / "home"  # a fresh $SHARDTRAIN_HOME: the registry does not exist yet
    # Fresh processes, as separate DAG runs (fork would inherit xgboost's OpenMP threads).
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_register, args=(str(home), p, barrier, results)) for p in payloads]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [o for o in outcomes if o[0] != "ok"]
    assert not errors, errors
    assert sorted(int(o[1]) for o in outcomes) == [1, 2, 3, 4]
    assert sorted(o[2] for o in outcomes) == [f"race-{i}" for i in range(PROCESSES)]
    with sqlite3.connect(home / "mlflow" / "mlflow.db") as db:
        versions = db.execute(
            "select count(*) from model_versions where name = 'raced'"
        ).fetchone()[0]
        experiments = db.execute(
            "select count(*) from experiments where name = 'shardtrain'"
        ).fetchone()[0]
    assert (versions, experiments) == (PROCESSES, 1)
