"""LightGBM training on Ray: locate data -> train (LightGBMTrainOperator) -> evaluate -> register.

Runs on the embedded defaults with ``python dags/lightgbm_training.py``.

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

from shardtrain_airflow.operators import LightGBMTrainOperator, RegisterModelOperator

with DAG(
    dag_id="shardtrain_lightgbm",
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

    train = LightGBMTrainOperator(
        task_id="train",
        path="{{ ti.xcom_pull(task_ids='locate_data')['train'] }}",
        eval_path="{{ ti.xcom_pull(task_ids='locate_data')['holdout'] }}",
        input_cols=FEATURES,
        label_col=LABEL,
        n_estimators=50,
        training_params={"num_leaves": 31, "learning_rate": 0.2},
        scaling_config={"num_workers": 2, "num_cpu_per_worker": 1},
        artifact_stage_location=os.environ.get("SHARDTRAIN_STAGE"),
        ray_conn_id=os.environ.get("SHARDTRAIN_RAY_CONN_ID"),
    )
    data >> train

    @task
    def evaluate(artifact: dict, data: dict) -> dict:
        from shardtrain import load_model

        booster = load_model(artifact)
        x, y = holdout(data["holdout"])
        score = rmse(booster.predict(x), y)
        print(f"model location: {artifact['uri']}")
        print(f"holdout rmse: {score:.4f}")
        return {"uri": artifact["uri"], "holdout_rmse": score}

    evaluated = evaluate(train.output, data)

    register = RegisterModelOperator(
        task_id="register",
        model=train.output,
        name="shardtrain_lightgbm_example",
        registry=os.environ.get("SHARDTRAIN_REGISTRY"),  # default: sqlite MLflow
    )
    evaluated >> register


if __name__ == "__main__":
    dag.test()
