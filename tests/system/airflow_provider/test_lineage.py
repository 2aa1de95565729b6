"""OpenLineage from the training and registration operators: dataset names for every kind of
data and location (fast), the facets an operator reports, and the events the OpenLineage
provider emitted (through its file transport) for a DAG run with dag.test(): data -> model ->
registry entry, in process and deferred to a Ray Job."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shardtrain import ModelArtifact
from shardtrain.integrations.lineage import (
    SnowflakeContext,
)
from shardtrain_airflow.operators import XGBoostTrainOperator
from shardtrain_airflow.operators.train import request_id_for
from tests.helpers import FEATURES, LABEL, TaskInstanceIdentity, write_regression

SF = SnowflakeContext(account="myorg-myaccount", database="ml", schema="public")
NS = "snowflake://myorg-myaccount"
SECRET = "hunter2-lineage-secret"
SNOWFLAKE_CONN = {
    "conn_type": "snowflake",
    "login": "trainer",
    "password": SECRET,
    "schema": "FEATURES",
    "extra": {"account": "xy12345", "region": "us-east-1", "database": "ML", "warehouse": "W"},
}


# -- naming, per kind of data and location ---------------------------------------------------


def test_the_airflow_wrapper_parses_queries_with_openlineage_sql():
    from shardtrain_airflow.lineage import sql_tables

    assert sorted(sql_tables("select * from a.b join c on a.b.k = c.k")) == ["a.b", "c"]


def test_the_operators_work_without_the_openlineage_client():
    """Optional: the operators import OpenLineage only when its listener asks for lineage."""
    script = (
        "import sys\n"
        "sys.modules['openlineage'] = None  # as if not installed: importing it fails\n"
        "from shardtrain_airflow.operators import RegisterModelOperator, XGBoostTrainOperator\n"
        "XGBoostTrainOperator(task_id='t', path='p', input_cols=['A'], label_col='Y')\n"
        "RegisterModelOperator(task_id='r', model='m', name='n')\n"
        "print('shardtrain_airflow.lineage' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr[-2000:]


def test_a_training_operator_reports_snowflake_inputs_with_their_columns(monkeypatch):
    from openlineage.client.serde import Serde

    monkeypatch.setenv("AIRFLOW_CONN_SF_LINEAGE", json.dumps(SNOWFLAKE_CONN))
    op = XGBoostTrainOperator(
        task_id="train",
        table="training_data",
        eval_query="select * from holdout h join raw.labels l on h.id = l.id",
        input_cols=FEATURES,
        label_col=LABEL,
        snowflake_conn_id="sf_lineage",
        artifact_stage_location="@MODELS/prod",
    )
    ti = TaskInstanceIdentity("dag", "manual__2026-01-01", "train")
    lineage = op.get_openlineage_facets_on_complete(ti)
    ns = "snowflake://xy12345.us-east-1.aws"  # account.region, as the provider names it
    assert {(d.namespace, d.name) for d in lineage.inputs} == {
        (ns, "ML.FEATURES.TRAINING_DATA"),
        (ns, "ML.FEATURES.HOLDOUT"),
        (ns, "ML.RAW.LABELS"),
    }
    for dataset in lineage.inputs:
        assert [f.name for f in dataset.facets["schema"].fields] == [*FEATURES, LABEL]
    # not published (a failed run): where the model was to go, without model facets
    (model,) = lineage.outputs
    assert (model.namespace, model.name) == (
        ns,
        f"ML.FEATURES.MODELS/prod/model/{request_id_for(ti)}",
    )
    assert model.facets == {}
    assert SECRET not in Serde.to_json(lineage.inputs[0]) + Serde.to_json(model)


# One DAG run, two pairs of tasks (a DAG subprocess costs ~15 s before it trains): train and
# register in process, train_job and register_job deferred to a Ray Job; the same lineage.
DAG_FILE = """
import os
import pendulum
from airflow.sdk import DAG
from shardtrain_airflow.operators import RegisterModelOperator, XGBoostTrainOperator

jobs = dict(ray_conn_id="ray_lineage", deferrable=True, run_as_job=True, poll_interval=0.5)
with DAG("lineage", schedule=None, start_date=pendulum.datetime(2026, 1, 1),
         catchup=False) as dag:
    for suffix, how in (("", {}), ("_job", jobs)):
        train = XGBoostTrainOperator(
            task_id="train" + suffix, path=os.environ["LINEAGE_TRAIN"],
            eval_path=os.environ["LINEAGE_EVAL"], input_cols=["A", "B", "C"], label_col="Y",
            n_estimators=3, training_params={"max_depth": 3},
            scaling_config={"num_workers": 1, "num_cpu_per_worker": 1},
            artifact_stage_location=os.environ["LINEAGE_STAGE"], snowflake_conn_id="sf_lineage",
            **how)
        RegisterModelOperator(task_id="register" + suffix, model=train.output,
                              name="lineage_model", registry=os.environ["LINEAGE_REGISTRY"])

if __name__ == "__main__":
    dag.test()
"""


@pytest.fixture(scope="module")
def lineage_run(airflow_env, ray_head, mlflow_template, tmp_path_factory):
    """Run the DAG with the OpenLineage provider writing its events to a file, on the
    session's head; (the run's folder, the events, the job server's token)."""
    from shardtrain.runtime import worker_group
    from tests.helpers import seed_mlflow_registry

    worker_group.shutdown_workers()  # the job's workers need the CPUs
    root = tmp_path_factory.mktemp("lineage")
    seed_mlflow_registry(mlflow_template, root / "mlflow.db")
    token = ray_head.token_path.read_text().strip()
    connection = {
        "conn_type": "ray",
        "password": token,
        "extra": {"job_server": ray_head.dashboard_url, "python": sys.executable},
    }
    (airflow_env.dags / "lineage_dag.py").write_text(DAG_FILE)
    events = root / "openlineage.ndjson"
    env = {
        **airflow_env.env,
        "SHARDTRAIN_HOME": os.environ["SHARDTRAIN_HOME"],  # joins the session's head
        "AIRFLOW_CONN_RAY_LINEAGE": json.dumps(connection),
        "LINEAGE_TRAIN": str(root / "data" / "train"),
        "LINEAGE_EVAL": str(root / "data" / "eval"),
        "LINEAGE_STAGE": str(root / "stage"),
        "LINEAGE_REGISTRY": f"sqlite:///{root / 'mlflow.db'}",
        "AIRFLOW_CONN_SF_LINEAGE": json.dumps(SNOWFLAKE_CONN),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "shardtrain_tests",
    }
    write_regression(root / "data" / "train" / "part-0.parquet", 400)
    write_regression(root / "data" / "eval" / "part-0.parquet", 100, seed=1)
    result = subprocess.run(
        [sys.executable, str(airflow_env.dags / "lineage_dag.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    states = dict(
        airflow_env.query("select task_id, state from task_instance where dag_id=?", "lineage")
    )
    tasks = ("train", "register", "train_job", "register_job")
    assert states == dict.fromkeys(tasks, "success"), output[-4000:]
    text = events.read_text()
    assert SECRET not in text
    return root, [json.loads(line) for line in text.splitlines() if line.strip()], token


def completed(events: list[dict], job: str) -> dict:
    (event,) = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == job]
    assert event["job"]["namespace"] == "shardtrain_tests"
    return event


def check_dag_lineage(airflow_env, tmp_path, events: list[dict], suffix: str) -> None:
    artifact = ModelArtifact.from_dict(airflow_env.xcom("lineage", "train" + suffix))
    registered = airflow_env.xcom("lineage", "register" + suffix)

    train = completed(events, f"lineage.train{suffix}")
    inputs = {(d["namespace"], d["name"]): d["facets"] for d in train["inputs"]}
    assert set(inputs) == {
        ("file", str(tmp_path / "data" / "train")),
        ("file", str(tmp_path / "data" / "eval")),
    }
    for facets in inputs.values():
        fields = {f["name"]: f.get("type") for f in facets["schema"]["fields"]}
        assert fields == {"A": "double", "B": "double", "C": "double", "Y": None}
    (model,) = train["outputs"]
    assert (model["namespace"], model["name"]) == ("file", artifact.uri)
    facet = model["facets"]["shardtrain_model"]
    assert facet["framework"] == "xgboost" and facet["requestId"] == artifact.request_id
    assert facet["metrics"] == artifact.metrics and set(facet["metrics"]) == {"train", "eval"}
    assert facet["params"]["max_depth"] == 3 and facet["numRows"] == {"train": 400, "eval": 100}
    assert facet["_schemaURL"].startswith("https://") and facet["_producer"]

    register = completed(events, f"lineage.register{suffix}")
    assert [(d["namespace"], d["name"]) for d in register["inputs"]] == [("file", artifact.uri)]
    (entry,) = register["outputs"]
    assert entry["namespace"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert entry["name"] == f"lineage_model/{registered['version']}"
    facet = entry["facets"]["shardtrain_registered_model"]
    assert facet["modelUri"] == registered["model_uri"] and facet["sourceUri"] == artifact.uri
    assert facet["requestId"] == artifact.request_id and facet["registry"] == "mlflow"


def test_a_dag_run_reports_data_to_model_to_registry(airflow_env, lineage_run):
    root, events, _ = lineage_run
    check_dag_lineage(airflow_env, root, events, "")


def test_a_deferred_ray_job_reports_the_same_lineage(airflow_env, lineage_run):
    root, events, token = lineage_run
    check_dag_lineage(airflow_env, root, events, "_job")
    assert token not in json.dumps(events)
