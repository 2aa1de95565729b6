"""The operators' own layer, fast and without Ray: arguments and templates into a
TrainingSpec, request ids, Snowpark sessions through the hook, the declared connection form."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shardtrain_airflow.hooks.ray import RayHook
from shardtrain_airflow.operators import (
    RegisterModelOperator,
    XGBoostTrainOperator,
)
from shardtrain_airflow.operators.train import request_id_for
from tests.helpers import FEATURES, LABEL, TaskInstanceIdentity, open_sessions

TI = TaskInstanceIdentity("dag", "manual__2026-01-01T00:00:00+00:00", "train")
LOCAL_SNOWFLAKE = json.dumps({"conn_type": "snowflake", "extra": {"local_testing": True}})


@pytest.fixture
def snowflake_local(monkeypatch):
    """An Airflow Snowflake connection on Snowpark's local emulation (no live account is
    reachable here), as an AIRFLOW_CONN_ variable."""
    monkeypatch.setenv("AIRFLOW_CONN_SNOWFLAKE_LOCAL", LOCAL_SNOWFLAKE)
    return "snowflake_local"


def test_connection_form_is_declared_for_airflow_3_3(tmp_path):
    """The provider is discovered and the ray connection's form comes from provider info (conn-fields / ui-field-behaviour),
    read by the providers manager without the deprecated hook methods."""
    script = (
        "import json; from airflow.providers_manager import ProvidersManager as P; p = P(); "
        "w = p.connection_form_widgets; b = p.field_behaviours; "
        "print(json.dumps({'hook': p.hooks['ray'].hook_class_name, "
        "'widgets': sorted(k for k in w if k.startswith('extra__ray__')), "
        "'behaviour': b.get('ray'), 'provider': 'airflow-provider-shardtrain' in p.providers}))"
    )
    env = {"AIRFLOW_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning:airflow.providers_manager", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["provider"]  # discovered through its entry point
    assert info["hook"] == "shardtrain_airflow.hooks.ray.RayHook"
    assert info["widgets"] == [
        "extra__ray__job_server",
        "extra__ray__namespace",
        "extra__ray__python",
        "extra__ray__runtime_env",
        "extra__ray__snowflake_connection",
    ]
    assert info["behaviour"]["hidden_fields"] == ["schema", "login"]
    assert info["behaviour"]["relabeling"]["password"].startswith("Job server token")
    assert info["behaviour"]["relabeling"]["host"].startswith("Address")
    assert "get_ui_field_behaviour" not in vars(RayHook)


def test_operators_close_the_sessions_they_open(
    ray_cluster, snowflake_local, mlflow_registry, tmp_path
):
    """Sessions opened through the hook are closed when the task ends (before, each task left
    its Snowpark session open)."""
    from shardtrain import load_model
    from tests.helpers import write_regression

    train = write_regression(tmp_path / "train.parquet", rows=500)
    before = open_sessions()
    to_snowflake = XGBoostTrainOperator(
        task_id="train",
        path=train,
        input_cols=FEATURES,
        label_col=LABEL,
        n_estimators=2,
        scaling_config={"num_workers": 2, "num_cpu_per_worker": 1},
        artifact_stage_location="@ML.PUBLIC.MODELS",
        snowflake_conn_id=snowflake_local,
    )
    published = to_snowflake.execute({"ti": TI})
    assert published["uri"] == f"@ML.PUBLIC.MODELS/model/{request_id_for(TI)}"
    assert open_sessions() == before
    local = XGBoostTrainOperator(
        task_id="train",
        path=train,
        input_cols=FEATURES,
        label_col=LABEL,
        n_estimators=2,
        scaling_config={"num_workers": 2, "num_cpu_per_worker": 1},
        artifact_stage_location=str(tmp_path / "stage"),
    ).execute({"ti": TI})
    assert load_model(local).num_boosted_rounds() == 2
    registered = RegisterModelOperator(
        task_id="register",
        model=local,
        name="closing_check",
        registry=mlflow_registry,
        snowflake_conn_id=snowflake_local,
    ).execute({"ti": TI})
    assert registered["source_uri"] == local["uri"]
    assert open_sessions() == before
