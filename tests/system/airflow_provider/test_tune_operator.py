"""TuneOperator end to end in a real ``dag.test()``: a grid search from one task, the best
model's artifact plus the trial table as XCom, and the best model registered downstream."""

from __future__ import annotations

TUNE_DAG = """
import numpy as np
import pandas as pd
import pendulum
from airflow.sdk import DAG

from shardtrain.modeling.tune import get_tuner_context
from shardtrain_airflow.operators import RegisterModelOperator, TuneOperator


def train_func():
    import xgboost

    ctx = get_tuner_context()
    x = np.random.default_rng(0).normal(size=200)
    model = xgboost.XGBRegressor(
        n_estimators=5, max_depth=ctx.get_hyper_params()["max_depth"], n_jobs=1
    ).fit(x[:, None], np.sin(3 * x))
    rmse = float(np.sqrt(np.mean((model.predict(x[:, None]) - np.sin(3 * x)) ** 2)))
    ctx.report(metrics={"rmse": rmse}, model=model)


with DAG("shardtrain_tune", schedule=None, start_date=pendulum.datetime(2026, 1, 1),
         catchup=False) as dag:
    tune = TuneOperator(
        task_id="tune", train_func=train_func, search_space={"max_depth": [1, 4]},
        metric="rmse", mode="min", search_alg="grid",
    )
    RegisterModelOperator(task_id="register", model=tune.output, name="tuned")

if __name__ == "__main__":
    dag.test()
"""


def test_tune_operator_xcom_is_the_best_model_plus_trials_and_registers(airflow_env):
    (airflow_env.dags / "tune_dag.py").write_text(TUNE_DAG)
    airflow_env.run_dag("tune_dag.py")
    best = airflow_env.xcom("shardtrain_tune", "tune")
    assert best["framework"] == "xgboost" and best["params"] == {"max_depth": 4}
    assert sorted(t["config/max_depth"] for t in best["trials"]) == [1, 4]
    assert best["best_result"]["rmse"] == min(t["rmse"] for t in best["trials"])
    assert "trials.parquet" in {f["path"] for f in best["files"]}
    registered = airflow_env.xcom("shardtrain_tune", "register")
    assert registered["name"] == "tuned"
