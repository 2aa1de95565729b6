"""ManyModelTrainOperator end to end in a real ``dag.test()``: three partitions from one task,
a partition failing on the first try and only that one retrained by the retry, the run
manifest as XCom, and every partition's model registered with its partition as a tag."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

MANY_MODEL_DAG = """
import os
import uuid
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG

from shardtrain_airflow.operators import ManyModelTrainOperator, RegisterModelOperator

WORK = Path(os.environ["MM_WORK"])


def train(data_connector, context):
    import xgboost

    (WORK / "calls" / f"{context.partition_id}-{uuid.uuid4().hex}").touch()
    if context.partition_id == "b" and not (WORK / "fixed").exists():
        (WORK / "fixed").touch()  # the retry succeeds
        raise RuntimeError("partition b: transient failure")
    df = data_connector.to_pandas()
    return xgboost.XGBRegressor(n_estimators=4, n_jobs=1).fit(df[["x"]], df["y"])


with DAG("shardtrain_many_model", schedule=None, start_date=pendulum.datetime(2026, 1, 1),
         catchup=False) as dag:
    train_all = ManyModelTrainOperator(
        task_id="train_all", train_func=train, partition_by="region",
        data=str(WORK / "data"), retries=1, retry_delay=timedelta(seconds=0),
    )
    RegisterModelOperator(task_id="register", model=train_all.output, name="mm_regions")

if __name__ == "__main__":
    dag.test()
"""


def test_many_model_operator_retries_only_the_failed_partition_and_registers_all(
    airflow_env, tmp_path
):
    work = tmp_path / "mm"
    (work / "calls").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for region in ("a", "b", "c"):
        folder = work / "data" / f"region={region}"
        folder.mkdir(parents=True)
        x = rng.normal(size=50)
        pq.write_table(
            pa.Table.from_pandas(pd.DataFrame({"x": x, "y": 2 * x})), folder / "p.parquet"
        )
    (airflow_env.dags / "many_model_dag.py").write_text(MANY_MODEL_DAG)
    output = airflow_env.run_dag("many_model_dag.py", {"MM_WORK": str(work)})
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
