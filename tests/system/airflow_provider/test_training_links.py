"""A training task's "Training curve" and "Ray dashboard" extra links, and its log naming the
image and reporting progress: read back from what real Airflow recorded (dag.test())."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from shardtrain import ModelArtifact
from shardtrain.model.curves import CURVES_FILE
from shardtrain.runtime.progress import Progress

pytestmark = [pytest.mark.airflow, pytest.mark.subprocess]  # real Airflow (dag.test in a subprocess) and real Ray

CURVES_DAG = """
import os

import pendulum
from airflow.sdk import DAG

from shardtrain_airflow.operators import XGBoostTrainOperator

with DAG("shardtrain_curves", schedule=None, start_date=pendulum.datetime(2026, 1, 1),
         catchup=False) as dag:
    XGBoostTrainOperator(
        task_id="train", path=os.environ["CURVES_TRAIN"], eval_path=os.environ["CURVES_EVAL"],
        input_cols=["F0", "F1", "F2", "F3"], label_col="LABEL", n_estimators=300,
        training_params={"eta": 0.9, "max_depth": 8, "early_stopping_rounds": 4},
        scaling_config={"num_workers": 1, "num_cpu_per_worker": 1})

if __name__ == "__main__":
    dag.test()
"""


def test_the_training_curve_and_dashboard_links_and_the_log(airflow_env):
    from example_data import prepare  # the examples' data helper (dags/ is on sys.path)

    data = prepare(5000)
    (airflow_env.dags / "curves_dag.py").write_text(CURVES_DAG)
    output = airflow_env.run_dag(
        "curves_dag.py", {"CURVES_TRAIN": data["train"], "CURVES_EVAL": data["holdout"]}
    )
    artifact = ModelArtifact.from_dict(airflow_env.xcom("shardtrain_curves", "train"))

    # the image: beside the model, listed in the manifest, opened by the extra link
    assert artifact.curves == f"{artifact.uri}/{_attempt(artifact)}/{CURVES_FILE}"
    png = Path(artifact.curves).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">I", png[16:20]) == (960,)
    link = airflow_env.xcom("shardtrain_curves", "train", "_link_TrainingCurveLink")
    assert link == Path(artifact.curves).as_uri()
    assert f"training curves: {artifact.curves}" in output  # the task log names it

    # the dashboard of the local head the task trained on
    head = json.loads((airflow_env.shardtrain_home / "cluster" / "cluster.json").read_text())
    dashboard = airflow_env.xcom("shardtrain_curves", "train", "_link_RayDashboardLink")
    assert dashboard == head["dashboard_url"] and dashboard.startswith("http://")
    assert f"Ray dashboard: {dashboard}" in output
    assert airflow_env.xcom("shardtrain_curves", "train", "_link_RayJobLink") == ""  # in process

    # progress in the task log: forward only, ending where early stopping ended the fit
    lines = [Progress.parse(line) for line in output.splitlines() if "progress: round" in line]
    assert lines and lines[-1].done and lines[-1].total == 300
    assert lines[-1].step < 300  # stopped early
    assert [p.step for p in lines[:-1]] == sorted({p.step for p in lines[:-1]})


def _attempt(artifact: ModelArtifact) -> str:
    manifest = json.loads((Path(artifact.uri) / "_MANIFEST.json").read_text())
    return manifest["attempt"]
