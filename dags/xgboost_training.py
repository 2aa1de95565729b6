"""XGBoost training on Ray: locate data -> train (XGBoostTrainOperator) -> evaluate -> register.

Runs on the embedded defaults (local Ray, local stage, sqlite MLflow) with
``python dags/xgboost_training.py``.

Point it at a real cluster, stage and registry with the environment of the scheduler and
workers (read when the DAG file is parsed): ``SHARDTRAIN_RAY_CONN_ID`` names a ``ray``
connection (host ``ray://head:10001``; the nodes need the same ``shardtrain`` extras),
``SHARDTRAIN_STAGE`` a stage (``@DB.SCHEMA.STAGE`` with the ``snowflake_default``
connection, or ``s3://...``) and ``SHARDTRAIN_REGISTRY`` an MLflow tracking URI. Trigger it
by hand with a larger ``rows`` param: it has no schedule, so unpausing it starts nothing.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task
from example_data import FEATURES, LABEL, holdout, prepare, rmse

from shardtrain_airflow.operators import RegisterModelOperator, XGBoostTrainOperator

with DAG(
    dag_id="shardtrain_xgboost",
    schedule=None,  # examples run when triggered, never on unpause
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"rows": Param(20_000, type="integer", minimum=1000)},
    default_args={"retries": 1, "retry_delay": timedelta(seconds=5)},
    tags=["shardtrain", "example"],
) as dag:

    @task
    def locate_data(**context) -> dict[str, str]:
        return prepare(int(context["params"]["rows"]))

    data = locate_data()

    train = XGBoostTrainOperator(
        task_id="train",
        path="{{ ti.xcom_pull(task_ids='locate_data')['train'] }}",
        eval_path="{{ ti.xcom_pull(task_ids='locate_data')['holdout'] }}",
        input_cols=FEATURES,
        label_col=LABEL,
        n_estimators=50,
        training_params={"max_depth": 6, "eta": 0.3},
        scaling_config={"num_workers": 2, "num_cpu_per_worker": 1},
        failure_config={"max_failures": 1, "checkpoint_frequency": 10},
        artifact_stage_location=os.environ.get("SHARDTRAIN_STAGE"),
        ray_conn_id=os.environ.get("SHARDTRAIN_RAY_CONN_ID"),
    )
    data >> train

    @task
    def evaluate(artifact: dict, data: dict) -> dict:
        import xgboost

        from shardtrain import load_model

        booster = load_model(artifact)
        x, y = holdout(data["holdout"])
        score = rmse(booster.predict(xgboost.DMatrix(x, feature_names=FEATURES)), y)
        print(f"model location: {artifact['uri']}")
        print(f"holdout rmse: {score:.4f}")
        return {"uri": artifact["uri"], "holdout_rmse": score}

    evaluated = evaluate(train.output, data)

    register = RegisterModelOperator(
        task_id="register",
        model=train.output,
        name="shardtrain_xgboost_example",
        registry=os.environ.get("SHARDTRAIN_REGISTRY"),  # default: sqlite MLflow
    )
    evaluated >> register


if __name__ == "__main__":
    dag.test()
