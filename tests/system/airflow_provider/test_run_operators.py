"""The many-model and tune operators end to end in real ``dag.test()`` runs, both DAGs from one
DAG file in one process (a DAG subprocess costs ~15 s before it trains).

ManyModelTrainOperator: three partitions from one task, a partition failing on the first try
and only that one retrained by the retry, the run manifest as XCom, and every partition's
model registered with its partition as a tag. TuneOperator: a grid search from one task, the
best model's artifact plus the trial table as XCom, and the best model registered downstream.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.airflow, pytest.mark.subprocess]  # dag.test in a subprocess, real Ray

RUNS_DAG = """
import os
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pendulum
from airflow.sdk import DAG

from shardtrain.modeling.tune import get_tuner_context
from shardtrain_airflow.operators import ManyModelTrainOperator, RegisterModelOperator, TuneOperator

WORK = Path(os.environ["MM_WORK"])


def train(data_connector, context):
    import xgboost

    (WORK / "calls" / f"{context.partition_id}-{uuid.uuid4().hex}").touch()
    if context.partition_id == "b" and not (WORK / "fixed").exists():
        (WORK / "fixed").touch()  # the retry succeeds
        raise RuntimeError("partition b: transient failure")
    df = data_connector.to_pandas()
    return xgboost.XGBRegressor(n_estimators=4, n_jobs=1).fit(df[["x"]], df["y"])


def train_func():
    import xgboost

    ctx = get_tuner_context()
    x = np.random.default_rng(0).normal(size=200)
    model = xgboost.XGBRegressor(
        n_estimators=5, max_depth=ctx.get_hyper_params()["max_depth"], n_jobs=1
    ).fit(x[:, None], np.sin(3 * x))
    rmse = float(np.sqrt(np.mean((model.predict(x[:, None]) - np.sin(3 * x)) ** 2)))
    ctx.report(metrics={"rmse": rmse}, model=model)


with DAG("shardtrain_many_model", schedule=None, start_date=pendulum.datetime(2026, 1, 1),
         catchup=False) as many_model_dag:
    train_all = ManyModelTrainOperator(
        task_id="train_all", train_func=train, partition_by="region",
        data=str(WORK / "data"), retries=1, retry_delay=timedelta(seconds=0),
    )
    RegisterModelOperator(task_id="register", model=train_all.output, name="mm_regions")

with DAG("shardtrain_tune", schedule=None, start_date=pendulum.datetime(2026, 1, 1),
         catchup=False) as tune_dag:
    tune = TuneOperator(
        task_id="tune", train_func=train_func, search_space={"max_depth": [1, 4]},
        metric="rmse", mode="min", search_alg="grid",
    )
    RegisterModelOperator(task_id="register", model=tune.output, name="tuned")

if __name__ == "__main__":
    many_model_dag.test()
    tune_dag.test()
"""


@pytest.fixture(scope="module")
def runs(airflow_env, tmp_path_factory):
    """Both DAGs run once; (the many-model work folder, the output of both runs)."""
    work = tmp_path_factory.mktemp("runs") / "mm"
    (work / "calls").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for region in ("a", "b", "c"):
        folder = work / "data" / f"region={region}"
        folder.mkdir(parents=True)
        x = rng.normal(size=50)
        pq.write_table(
            pa.Table.from_pandas(pd.DataFrame({"x": x, "y": 2 * x})), folder / "p.parquet"
        )
    (airflow_env.dags / "runs_dag.py").write_text(RUNS_DAG)
    return work, airflow_env.run_dag("runs_dag.py", {"MM_WORK": str(work)})


def test_many_model_operator_retries_only_the_failed_partition_and_registers_all(
    airflow_env, runs
):
    work, output = runs
    assert "partition b: transient failure" in output  # the traceback reached the task log

    calls = sorted(p.name.split("-")[0] for p in (work / "calls").iterdir())
    assert calls == ["a", "b", "b", "c"]  # the retry trained only b

    manifest = airflow_env.xcom("shardtrain_many_model", "train_all")
    assert manifest["status"] == "SUCCESS"
    assert sorted(manifest["partitions"]) == ["a", "b", "c"]
    for pid, record in manifest["partitions"].items():
        assert record["status"] == "DONE"
        assert record["location"].endswith(f"/model/{manifest['run_id']}/{pid}")
    assert manifest["partitions"]["b"]["attempts"] == 2

    registered = airflow_env.xcom("shardtrain_many_model", "register")
    assert sorted(registered) == ["a", "b", "c"]
    assert {r["name"] for r in registered.values()} == {"mm_regions"}
    assert len({r["version"] for r in registered.values()}) == 3


def test_tune_operator_xcom_is_the_best_model_plus_trials_and_registers(airflow_env, runs):
    best = airflow_env.xcom("shardtrain_tune", "tune")
    assert best["framework"] == "xgboost" and best["params"] == {"max_depth": 4}
    assert sorted(t["config/max_depth"] for t in best["trials"]) == [1, 4]
    assert best["best_result"]["rmse"] == min(t["rmse"] for t in best["trials"])
    assert "trials.parquet" in {f["path"] for f in best["files"]}
    registered = airflow_env.xcom("shardtrain_tune", "register")
    assert registered["name"] == "tuned"
