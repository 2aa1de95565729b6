"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/airflow_provider/test_operators.py.]

The operators' own layer, fast and without Ray: arguments and templates into a
TrainingSpec, request ids, Snowpark sessions through the hook, the declared connection form."""

from __future__ import annotations

import json

import pytest

from shardtrain.errors import ConfigError
from shardtrain.integrations import DataSpec, TrainingSpec
from shardtrain_airflow.hooks.ray import RayHook
from shardtrain_airflow.hooks.snowpark import SnowparkHook
from shardtrain_airflow.operators import (
    LightGBMTrainOperator,
    PyTorchTrainOperator,
    RegisterModelOperator,
    TrainOperator,
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


def test_xgboost_arguments_and_templates_become_a_training_spec():
    op = XGBoostTrainOperator(
        task_id="train",
        path="s3://bucket/features/{{ ds }}/",
        eval_query="select * from EVAL where day = '{{ ds }}'",
        input_cols="A, B,C",
        label_col="{{ params.label }}",
        training_params={"eta": "{{ params.eta }}", "max_depth": 6},
        n_estimators=20,
        scaling_config={"num_workers": 2, "num_cpu_per_worker": 1},
        failure_config={"max_failures": 1},
        artifact_stage_location="@ML.PUBLIC.MODELS/{{ ds_nodash }}",
        snowflake_conn_id="snowflake_default",
    )
    op.render_template_fields(
        {"ds": "2026-01-01", "ds_nodash": "20260101", "params": {"label": "Y", "eta": "0.3"}}
    )
    spec = op.training_spec({"ti": TI})
    assert spec == TrainingSpec(
        framework="xgboost",
        request_id=request_id_for(TI),
        artifact_stage_location="@ML.PUBLIC.MODELS/20260101",
        train_data=DataSpec(path="s3://bucket/features/2026-01-01/"),
        eval_data=DataSpec(query="select * from EVAL where day = '2026-01-01'"),
        input_cols=("A", "B", "C"),
        label_col="Y",
        n_estimators=20,
        objective="reg:squarederror",
        params={"eta": "0.3", "max_depth": 6},
        scaling_config={"num_workers": 2, "num_cpu_per_worker": 1},
        failure_config={"max_failures": 1},
    )
    assert TrainingSpec.from_json(spec.to_json()) == spec


def test_lightgbm_defaults_and_bad_arguments_fail_before_any_worker():
    op = LightGBMTrainOperator(task_id="t", table="T", input_cols=FEATURES, label_col=LABEL)
    with pytest.raises(ConfigError, match="needs a Snowpark session: set snowflake_conn_id"):
        op.training_spec({"ti": TI})
    op.snowflake_conn_id = "sf"
    spec = op.training_spec({"ti": TI})
    assert spec.framework == "lightgbm" and spec.objective == "regression"
    assert spec.train_data == DataSpec(table="T") and spec.eval_data is None
    no_data = XGBoostTrainOperator(task_id="nodata", input_cols=["A"], label_col="Y")
    with pytest.raises(ConfigError, match="'nodata' has no training data: give table=, query="):
        no_data.training_spec({"ti": TI})
    typo = XGBoostTrainOperator(
        task_id="t", path="p", input_cols=["A"], label_col="Y", scaling_config={"workers": 2}
    )
    with pytest.raises(ConfigError, match=r"unknown keys \['workers'\]"):
        typo.training_spec({"ti": TI})


def module_level_train():
    """A train_func the PyTorch operator can name by dotted path."""


def test_pytorch_operator_shares_the_training_base_and_builds_its_spec():
    assert issubclass(PyTorchTrainOperator, TrainOperator)
    assert issubclass(XGBoostTrainOperator, TrainOperator)
    scaling = {
        "num_nodes": 1,
        "num_workers_per_node": 2,
        "resource_requirements_per_worker": {"num_cpus": 0, "num_gpus": 1},
    }
    by_path = PyTorchTrainOperator(
        task_id="train",
        train_func="test_operators:module_level_train",
        dataset_map={"train": {"path": "s3://b/{{ ds }}/"}, "val": {"table": "VAL"}},
        hyper_params={"lr": "{{ params.lr }}"},
        scaling_config=scaling,
        snowflake_conn_id="sf",
    )
    by_path.render_template_fields({"ds": "2026-01-01", "params": {"lr": "0.01"}})
    spec = by_path.training_spec({"ti": TI})
    assert spec.train_func == "test_operators:module_level_train"
    assert by_path.train_callable() is None
    assert spec.dataset_map == {
        "train": DataSpec(path="s3://b/2026-01-01/"),
        "val": DataSpec(table="VAL"),
    }
    assert spec.hyper_params == {"lr": "0.01"} and spec.scaling_config == scaling
    by_callable = PyTorchTrainOperator(task_id="train", train_func=module_level_train)
    assert by_callable.training_spec({"ti": TI}).train_func is None
    assert by_callable.train_callable() is module_level_train
    with pytest.raises(ConfigError, match="train_func must be a callable or an importable"):
        PyTorchTrainOperator(task_id="x", train_func=3).training_spec({"ti": TI})


def test_request_ids_are_stable_per_task_instance_and_distinct_otherwise():
    first = request_id_for(TI)
    assert first == request_id_for(TaskInstanceIdentity(TI.dag_id, TI.run_id, TI.task_id, -1, 2))
    assert first.startswith("dag__manual__2026-01-01T00-00-00-00-00__train-")
    other_run = TaskInstanceIdentity("dag", "scheduled__2026-01-02", "train")
    mapped = TaskInstanceIdentity(TI.dag_id, TI.run_id, TI.task_id, 3)
    assert len({first, request_id_for(other_run), request_id_for(mapped)}) == 3
    assert "__3-" in request_id_for(mapped)


def test_snowpark_hook_closes_its_session_also_on_failure(snowflake_local):
    before = open_sessions()
    with pytest.raises(RuntimeError, match="boom"):
        with SnowparkHook(snowflake_local).session() as session:
            assert session.create_dataframe([[1]], schema=["X"]).count() == 1
            raise RuntimeError("boom")
    assert session._conn.is_closed() and open_sessions() == before


def test_ray_hook_reads_the_declared_fields(monkeypatch):
    conn = {
        "conn_type": "ray",
        "host": "ray://head",
        "port": 10001,
        "extra": {"namespace": "training", "runtime_env": '{"pip": ["xgboost"]}'},
    }
    monkeypatch.setenv("AIRFLOW_CONN_RAY_TEST", json.dumps(conn))
    assert RayHook("ray_test").settings() == {
        "address": "ray://head:10001",
        "namespace": "training",
        "runtime_env": {"pip": ["xgboost"]},
    }
    assert RayHook().settings() == {"address": None, "namespace": None, "runtime_env": None}
    conn["extra"] = {"runtime_env": "{not json"}
    monkeypatch.setenv("AIRFLOW_CONN_RAY_TEST", json.dumps(conn))
    with pytest.raises(ConfigError, match="runtime_env of Ray connection 'ray_test' is not JSON"):
        RayHook("ray_test").settings()


def test_register_operator_templates_its_model():
    op = RegisterModelOperator(task_id="r", model="{{ params.uri }}", name="m_{{ ds_nodash }}")
    op.render_template_fields({"params": {"uri": "/stage/model/r1"}, "ds_nodash": "20260101"})
    assert (op.model, op.name) == ("/stage/model/r1", "m_20260101")
