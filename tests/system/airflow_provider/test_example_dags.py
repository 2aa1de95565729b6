"""Every example DAG end to end with dag.test() on real Airflow and a real local Ray, and one
DAG of extra tasks: a retry after publishing, a Snowflake password, the curve and dashboard links."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from shardtrain import ModelArtifact, load_model
from shardtrain.model.curves import CURVES_FILE
from shardtrain.runtime.progress import Progress
from shardtrain_airflow.links import model_url

pytestmark = [pytest.mark.airflow, pytest.mark.subprocess]  # real Airflow (dag.test in a subprocess) and real Ray


@pytest.mark.parametrize(
    "name,framework", [("xgboost", "xgboost"), ("lightgbm", "lightgbm"), ("pytorch", "pytorch")]
)
def test_example_dag_trains_and_hands_the_model_on(airflow_env, name, framework):
    output = airflow_env.run_dag(
        f"{name}_training.py", {"AIRFLOW__CORE__DAGS_FOLDER": str(airflow_env.dags)}
    )
    dag_id = f"shardtrain_{name}"
    artifact = ModelArtifact.from_dict(airflow_env.xcom(dag_id, "train"))
    assert artifact.framework == framework
    assert artifact.uri.startswith(str(airflow_env.shardtrain_home / "stage" / "model"))
    assert artifact.request_id.startswith(f"{dag_id}__manual__")
    model = load_model(artifact)
    assert model is not None
    evaluated = airflow_env.xcom(dag_id, "evaluate")
    assert evaluated["uri"] == artifact.uri and evaluated["holdout_rmse"] > 0
    assert f"model location: {artifact.uri}" in output
    # the registration task received the artifact and registered it in the MLflow registry
    registered = airflow_env.xcom(dag_id, "register")
    assert registered["registry"] == "mlflow" and registered["source_uri"] == artifact.uri
    assert registered["request_id"] == artifact.request_id
    assert registered["name"] == f"{dag_id}_example" and registered["model_uri"].startswith(
        f"models:/{dag_id}_example/"
    )
    assert f"registered model: {dag_id}_example version" in output
    # the extra link of the train task opens the model's folder (a local stage: file://)
    link = airflow_env.xcom(dag_id, "train", "_link_ModelLocationLink")
    assert link == f"file://{artifact.uri}" and link == model_url(artifact.uri)
    rendered = airflow_env.query(
        "select rendered_fields from rendered_task_instance_fields where dag_id=? and "
        "task_id='train' order by run_id desc",
        dag_id,
    )
    fields = json.loads(rendered[0][0])
    data_root = str(airflow_env.shardtrain_home / "examples")
    if framework == "pytorch":
        assert fields["dataset_map"]["train"]["path"].startswith(data_root)
    else:
        assert fields["path"].startswith(data_root) and "{{" not in fields["eval_path"]
        assert artifact.source["train"]["path"] == fields["path"]


def test_per_round_metrics_reach_the_task_log(airflow_env):
    """dag.test() streams task logs to the console: the XGBoost run's log has every 10th
    round's global metrics, logged through the task's logger."""
    log = airflow_env.outputs.get("xgboost_training.py") or airflow_env.run_dag(
        "xgboost_training.py"
    )
    for round_ in (10, 20, 30, 40, 50):
        assert f"[{round_}]\ttrain-rmse:" in log and "eval-rmse:" in log
    assert "[shardtrain]" in log


# One DAG run for three behaviours (a DAG subprocess costs ~15 s before it trains): a try that
# fails after publishing and its retry, a Snowflake connection's password, and the training
# curve / dashboard links with progress in the log. Its three tasks do not depend on each other.
EXTRAS_DAG = """
import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from shardtrain_airflow.operators import XGBoostTrainOperator


class FlakyAfterPublishing(XGBoostTrainOperator):
    def execute(self, context):
        artifact = super().execute(context)
        print("TRY", context["ti"].try_number, artifact["uri"])
        if context["ti"].try_number == 1:
            raise RuntimeError("transient failure after publishing")
        return artifact


with DAG("shardtrain_extras", schedule=None, start_date=pendulum.datetime(2026, 1, 1),
         catchup=False) as dag:
    FlakyAfterPublishing(
        task_id="retry", path=os.environ["EXTRAS_TRAIN"], input_cols=["F0", "F1", "F2"],
        label_col="LABEL", n_estimators=5, scaling_config={"num_workers": 2,
                                                           "num_cpu_per_worker": 1},
        retries=1, retry_delay=timedelta(seconds=0))
    XGBoostTrainOperator(
        task_id="secret", path=os.environ["EXTRAS_TRAIN"], input_cols=["F0", "F1"],
        label_col="LABEL", n_estimators=3, snowflake_conn_id="snowflake_local",
        artifact_stage_location="@ML.PUBLIC.MODELS",
        scaling_config={"num_workers": 2, "num_cpu_per_worker": 1})
    XGBoostTrainOperator(
        task_id="curves", path=os.environ["EXTRAS_TRAIN"], eval_path=os.environ["EXTRAS_EVAL"],
        input_cols=["F0", "F1", "F2", "F3"], label_col="LABEL", n_estimators=300,
        training_params={"eta": 0.9, "max_depth": 8, "early_stopping_rounds": 4},
        scaling_config={"num_workers": 1, "num_cpu_per_worker": 1})

if __name__ == "__main__":
    dag.test()
"""

PASSWORD = "pw-that-must-not-leak-7781"


@pytest.fixture(scope="module")
def extras(airflow_env) -> str:
    """The extras DAG, run once with dag.test(); its output (every task's log)."""
    from example_data import prepare  # the examples' data helper (dags/ is on sys.path)

    data = prepare(5000)
    # The Snowflake connection carries a password; the session is Snowpark's local
    # emulation (no live account is reachable here), selected by the connection's extra.
    connection = json.dumps(
        {
            "conn_type": "snowflake",
            "login": "trainer",
            "password": PASSWORD,
            "extra": {"account": "acme", "local_testing": True},
        }
    )
    (airflow_env.dags / "extras_dag.py").write_text(EXTRAS_DAG)
    return airflow_env.run_dag(
        "extras_dag.py",
        {
            "EXTRAS_TRAIN": data["train"],
            "EXTRAS_EVAL": data["holdout"],
            "AIRFLOW_CONN_SNOWFLAKE_LOCAL": connection,
        },
    )


def test_failed_try_then_retry_publishes_to_the_same_location(airflow_env, extras):
    uris = [line.split()[-1] for line in extras.splitlines() if line.startswith("TRY ")]
    assert len(uris) == 2 and uris[0] == uris[1], uris
    artifact = ModelArtifact.from_dict(airflow_env.xcom("shardtrain_extras", "retry"))
    assert artifact.uri == uris[0]
    run_folders = [
        p
        for p in (airflow_env.shardtrain_home / "stage" / "model").iterdir()
        if p.name.startswith("shardtrain_extras__") and "__retry-" in p.name  # then a hash
    ]
    assert len(run_folders) == 1
    assert load_model(artifact).num_boosted_rounds() == 5


def test_snowflake_password_never_reaches_xcom_or_logs(airflow_env, extras):
    artifact = airflow_env.xcom("shardtrain_extras", "secret")
    assert artifact["uri"].startswith("@ML.PUBLIC.MODELS/model/shardtrain_extras__")
    everything = (
        extras + json.dumps(airflow_env.query("select value from xcom")) + airflow_env.logs()
    )
    assert PASSWORD not in everything


def test_the_training_curve_and_dashboard_links_and_the_log(airflow_env, extras):
    """A training task's "Training curve" and "Ray dashboard" extra links, and its log naming
    the image and reporting progress: read back from what real Airflow recorded."""
    artifact = ModelArtifact.from_dict(airflow_env.xcom("shardtrain_extras", "curves"))

    # the image: beside the model, listed in the manifest, opened by the extra link
    assert artifact.curves == f"{artifact.uri}/{_attempt(artifact)}/{CURVES_FILE}"
    png = Path(artifact.curves).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">I", png[16:20]) == (960,)
    link = airflow_env.xcom("shardtrain_extras", "curves", "_link_TrainingCurveLink")
    assert link == Path(artifact.curves).as_uri()
    assert f"training curves: {artifact.curves}" in extras  # the task log names it

    # the dashboard of the local head the task trained on
    head = json.loads((airflow_env.shardtrain_home / "cluster" / "cluster.json").read_text())
    dashboard = airflow_env.xcom("shardtrain_extras", "curves", "_link_RayDashboardLink")
    assert dashboard == head["dashboard_url"] and dashboard.startswith("http://")
    assert f"Ray dashboard: {dashboard}" in extras
    assert airflow_env.xcom("shardtrain_extras", "curves", "_link_RayJobLink") == ""  # in process

    # progress in the task log: forward only, ending where early stopping ended the fit (the
    # other tasks' fits have 5 and 3 rounds: the 300-round lines are this task's)
    lines = [Progress.parse(line) for line in extras.splitlines() if "progress: round" in line]
    lines = [p for p in lines if p.total == 300]
    assert lines and lines[-1].done
    assert lines[-1].step < 300  # stopped early
    assert [p.step for p in lines[:-1]] == sorted({p.step for p in lines[:-1]})


def _attempt(artifact: ModelArtifact) -> str:
    manifest = json.loads((Path(artifact.uri) / "_MANIFEST.json").read_text())
    return manifest["attempt"]


def test_on_kill_tears_down_the_ray_workers(ray_cluster):
    """Airflow calls on_kill when a task is stopped: the run's Ray workers go with it."""
    import pandas as pd

    from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig
    from shardtrain.runtime import worker_group
    from shardtrain_airflow.operators import XGBoostTrainOperator

    frame = pd.DataFrame({"A": range(100), "Y": range(100)})
    XGBEstimator(
        n_estimators=2, scaling_config=XGBScalingConfig(num_workers=2, num_cpu_per_worker=1)
    ).fit(frame, ["A"], "Y")
    assert worker_group.idle_groups(), "a warm worker group should be held after a fit"
    XGBoostTrainOperator(task_id="t", path="x", input_cols=["A"], label_col="Y").on_kill()
    assert not worker_group.idle_groups() and not worker_group._busy
