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
from shardtrain.integrations import DataSpec, TrainingSpec
from shardtrain.integrations.lineage import (
    LineageDataset,
    SnowflakeContext,
    data_datasets,
    model_location,
    path_dataset,
    query_tables,
    registry_dataset,
    safe_params,
    snowflake_authority,
    stage_dataset,
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


def test_snowflake_tables_are_named_in_the_account_with_the_connection_defaults():
    def names(table):
        return [(d.namespace, d.name) for d in data_datasets(DataSpec(table=table), SF)]

    assert names("training_data") == [(NS, "ML.PUBLIC.TRAINING_DATA")]
    assert names("raw.events") == [(NS, "ML.RAW.EVENTS")]
    assert names('other."Db".t') == [(NS, "OTHER.Db.T")]  # quoted: exact case
    unknown = data_datasets(DataSpec(table="s.t"))  # no connection: no account, no defaults
    assert unknown == (LineageDataset("snowflake", "S.T"),)


def test_a_query_names_the_tables_it_reads():
    sql = """
        with recent as (select * from raw.events where ts > '2026-01-01 from x')
        select r.*, d.region -- from comments
        from recent r join "Dims"."Region" d on r.k = d.k
        left join table(flatten(input => r.tags)) f
        where r.id in (select id from ml.public.allow_list)
    """
    assert query_tables(sql) == ["raw.events", '"Dims"."Region"', "ml.public.allow_list"]
    named = data_datasets(DataSpec(query=sql), SF)
    assert [d.name for d in named] == ["ML.RAW.EVENTS", "ML.Dims.Region", "ML.PUBLIC.ALLOW_LIST"]
    assert {d.namespace for d in named} == {NS}


def test_the_airflow_wrapper_parses_queries_with_openlineage_sql():
    from shardtrain_airflow.lineage import sql_tables

    assert sorted(sql_tables("select * from a.b join c on a.b.k = c.k")) == ["a.b", "c"]


@pytest.mark.parametrize(
    "location,namespace,name",
    [
        ("s3://bucket/features/2026/", "s3://bucket", "features/2026"),
        ("s3a://bucket/x.parquet", "s3://bucket", "x.parquet"),
        ("s3://AKIAKEY:s3cr3t@bucket/x", "s3://bucket", "x"),  # never a credential
        ("gs://bucket/d", "gs://bucket", "d"),
        ("abfss://data@acct.dfs.core.windows.net/t", "abfss://data@acct.dfs.core.windows.net", "t"),
        ("/data/train/", "file", "/data/train"),
        ("file:///data/train", "file", "/data/train"),
        ("relative/train", "file", os.path.abspath("relative/train")),
    ],
)
def test_parquet_locations_are_named_by_their_store(location, namespace, name):
    assert path_dataset(location) == LineageDataset(namespace, name)


def test_model_locations_on_every_kind_of_stage():
    spec = TrainingSpec(
        framework="xgboost", request_id="r1", train_data="p", input_cols=["A"], label_col="Y"
    )
    at = dict(artifact_stage_location="@MODELS/prod")
    on_snowflake = TrainingSpec(**{**spec.to_dict(), **at})
    assert model_location(on_snowflake) == "@MODELS/prod/model/r1"
    assert stage_dataset(model_location(on_snowflake), SF) == LineageDataset(
        NS, "ML.PUBLIC.MODELS/prod/model/r1"
    )
    assert stage_dataset("ML.PUBLIC.MODELS/model/r1", SF).name == "ML.PUBLIC.MODELS/model/r1"
    assert stage_dataset("@~/m/model/r1") == LineageDataset("snowflake", "~/m/model/r1")
    assert stage_dataset("s3://b/stage/model/r1") == LineageDataset("s3://b", "stage/model/r1")
    default = stage_dataset(model_location(spec))  # the embedded default stage
    assert default.namespace == "file" and default.name.endswith("/stage/model/r1")


def test_registry_entries_are_named_by_registry_without_credentials():
    mlflow = registry_dataset("https://user:tok3n@mlflow.example.com/", "churn", "3")
    assert mlflow == LineageDataset("https://mlflow.example.com", "churn/3")
    embedded = registry_dataset(None, "churn", "1")
    assert embedded.namespace.startswith("sqlite:///") and embedded.name == "churn/1"
    assert registry_dataset("snowflake", "churn", "V1", SF) == LineageDataset(
        NS, "ML.PUBLIC.CHURN/V1"
    )


def test_account_names_agree_with_the_snowflake_providers_openlineage_support():
    from airflow.providers.snowflake.utils.openlineage import fix_account_name

    for account in ("xy12345", "xy12345.us-east-1", "xy12345.eu-west-1.azure", "myorg-acct"):
        assert snowflake_authority(account) == fix_account_name(account)


def test_secret_named_parameters_and_url_credentials_never_reach_a_facet():
    shown = safe_params({"eta": 0.1, "token": "x", "nested": {"password": "p", "u": "s3://k:s@b/"}})
    assert shown == {"eta": 0.1, "nested": {"u": "s3://b/"}}


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


# -- what an operator reports -------------------------------------------------------------------


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


# -- the events the OpenLineage provider emitted for a DAG run --------------------------------

DAG_FILE = """
import os
import pendulum
from airflow.sdk import DAG
from shardtrain_airflow.operators import RegisterModelOperator, XGBoostTrainOperator

jobs = {}
if os.environ.get("DEFERRABLE") == "1":
    jobs = dict(ray_conn_id="ray_lineage", deferrable=True, run_as_job=True, poll_interval=0.5)
with DAG(os.environ["DAG_ID"], schedule=None, start_date=pendulum.datetime(2026, 1, 1),
         catchup=False) as dag:
    train = XGBoostTrainOperator(
        task_id="train", path=os.environ["LINEAGE_TRAIN"], eval_path=os.environ["LINEAGE_EVAL"],
        input_cols=["A", "B", "C"], label_col="Y", n_estimators=3,
        training_params={"max_depth": 3}, scaling_config={"num_workers": 1, "num_cpu_per_worker": 1},
        artifact_stage_location=os.environ["LINEAGE_STAGE"], snowflake_conn_id="sf_lineage", **jobs)
    RegisterModelOperator(task_id="register", model=train.output, name="lineage_model",
                          registry=os.environ["LINEAGE_REGISTRY"])

if __name__ == "__main__":
    dag.test()
"""


def run_lineage_dag(airflow_env, tmp_path, dag_id: str, **extra_env) -> list[dict]:
    """Run the DAG with the OpenLineage provider writing its events to a file; the events."""
    (airflow_env.dags / "lineage_dag.py").write_text(DAG_FILE)
    events = tmp_path / "openlineage.ndjson"
    env = {
        **airflow_env.env,
        "DAG_ID": dag_id,
        "LINEAGE_TRAIN": str(tmp_path / "data" / "train"),
        "LINEAGE_EVAL": str(tmp_path / "data" / "eval"),
        "LINEAGE_STAGE": str(tmp_path / "stage"),
        "LINEAGE_REGISTRY": f"sqlite:///{tmp_path / 'mlflow.db'}",  # seeded: mlflow_registry
        "AIRFLOW_CONN_SF_LINEAGE": json.dumps(SNOWFLAKE_CONN),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "shardtrain_tests",
        **extra_env,
    }
    write_regression(tmp_path / "data" / "train" / "part-0.parquet", 400)
    write_regression(tmp_path / "data" / "eval" / "part-0.parquet", 100, seed=1)
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
        airflow_env.query("select task_id, state from task_instance where dag_id=?", dag_id)
    )
    assert states == {"train": "success", "register": "success"}, output[-4000:]
    text = events.read_text()
    assert SECRET not in text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def completed(events: list[dict], job: str) -> dict:
    (event,) = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == job]
    assert event["job"]["namespace"] == "shardtrain_tests"
    return event


def check_dag_lineage(airflow_env, tmp_path, dag_id: str, events: list[dict]) -> None:
    artifact = ModelArtifact.from_dict(airflow_env.xcom(dag_id, "train"))
    registered = airflow_env.xcom(dag_id, "register")

    train = completed(events, f"{dag_id}.train")
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

    register = completed(events, f"{dag_id}.register")
    assert [(d["namespace"], d["name"]) for d in register["inputs"]] == [("file", artifact.uri)]
    (entry,) = register["outputs"]
    assert entry["namespace"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert entry["name"] == f"lineage_model/{registered['version']}"
    facet = entry["facets"]["shardtrain_registered_model"]
    assert facet["modelUri"] == registered["model_uri"] and facet["sourceUri"] == artifact.uri
    assert facet["requestId"] == artifact.request_id and facet["registry"] == "mlflow"


def test_a_dag_run_reports_data_to_model_to_registry(
    airflow_env, ray_head, mlflow_registry, tmp_path
):
    events = run_lineage_dag(
        airflow_env,
        tmp_path,
        "lineage_in_process",
        SHARDTRAIN_HOME=os.environ["SHARDTRAIN_HOME"],  # joins the session's head
    )
    check_dag_lineage(airflow_env, tmp_path, "lineage_in_process", events)


def test_a_deferred_ray_job_reports_the_same_lineage(
    airflow_env, ray_head, mlflow_registry, tmp_path
):
    from shardtrain.runtime import worker_group

    worker_group.shutdown_workers()  # the job's workers need the CPUs
    token = ray_head.token_path.read_text().strip()
    connection = {
        "conn_type": "ray",
        "password": token,
        "extra": {"job_server": ray_head.dashboard_url, "python": sys.executable},
    }
    events = run_lineage_dag(
        airflow_env,
        tmp_path,
        "lineage_deferred",
        DEFERRABLE="1",
        SHARDTRAIN_HOME=os.environ["SHARDTRAIN_HOME"],  # the session's head
        AIRFLOW_CONN_RAY_LINEAGE=json.dumps(connection),
    )
    check_dag_lineage(airflow_env, tmp_path, "lineage_deferred", events)
    assert token not in json.dumps(events)
