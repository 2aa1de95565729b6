"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/core/test_integrations.py.]

The integration layer: specs (validation, exact JSON round trips, no secrets), building
estimators from plain arguments, data specs, Snowpark sessions, and run_training end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from shardtrain import (
    FailureConfig,
    LightGBMEstimator,
    PyTorchDistributor,
    PyTorchScalingConfig,
    WorkerResourceConfig,
    XGBEstimator,
    XGBScalingConfig,
)
from shardtrain.errors import ConfigError, ScalingConfigError
from shardtrain.integrations import (
    DataSpec,
    TrainingSpec,
    build_distributor,
    build_estimator,
    closing_session,
    request_id_from,
    resolve_callable,
    resolve_module,
    run_training,
    session_from_connection,
)
from tests.helpers import (
    FEATURES,
    LABEL,
    local_snowflake_connections,
    open_sessions,
)


def xgb_spec(**overrides) -> TrainingSpec:
    fields = dict(
        framework="xgboost",
        request_id="run-1",
        train_data={"path": "/data/train"},
        input_cols=FEATURES,
        label_col=LABEL,
    )
    return TrainingSpec(**{**fields, **overrides})


def torch_spec(**overrides) -> TrainingSpec:
    fields = dict(framework="pytorch", request_id="run-2", train_func="tests.unit.core.test_integrations:train")
    return TrainingSpec(**{**fields, **overrides})


def test_data_spec_forms():
    assert DataSpec.parse("s3://bucket/train/") == DataSpec(path="s3://bucket/train/")
    assert DataSpec.parse({"table": "T", "query": None, "path": ""}) == DataSpec(table="T")
    assert DataSpec.parse(None) is None and DataSpec.parse({"table": ""}) is None
    assert DataSpec.parse("  ") is None
    spec = DataSpec(query="select 1")
    assert DataSpec.parse(spec) is spec and spec.kind == "query" and spec.needs_session
    assert DataSpec(path="p").to_dict() == {"path": "p"} and not DataSpec(path="p").needs_session
    with pytest.raises(ConfigError, match=r"one of table, query or path for the eval data"):
        DataSpec.parse({"table": "T", "path": "p"}, name="eval")
    with pytest.raises(ConfigError, match=r"unknown keys \['tabel'\]"):
        DataSpec.parse({"tabel": "T"})
    with pytest.raises(ConfigError, match="exactly one of table, query or path"):
        DataSpec(table="T", path="p")
    with pytest.raises(ConfigError, match="must be a Parquet path or a dict"):
        DataSpec.parse(3)
    with pytest.raises(ConfigError, match="carries credentials in its URL"):
        DataSpec(path="s3://AKIA:secret@bucket/train")


@pytest.mark.parametrize(
    "spec",
    [
        xgb_spec(),
        xgb_spec(
            framework="lightgbm",
            eval_data="/data/eval",
            input_cols="A, B ,C",
            objective="regression_l1",
            params={"num_leaves": 31, "nested": {"a": [1, 2.5, None]}},
            n_estimators=7,
            verbose_eval=None,
            scaling_config={"num_workers": 2, "num_cpu_per_worker": 1, "use_gpu": False},
            failure_config={"max_failures": 2, "checkpoint_frequency": 5},
            artifact_stage_location="@ML.PUBLIC.MODELS",
            snowflake_connection="prod",
        ),
        torch_spec(
            dataset_map={"train": {"table": "T"}, "val": "/data/val"},
            hyper_params={"lr": 0.01, "layers": [32, 16]},
            scaling_config={
                "num_nodes": 1,
                "num_workers_per_node": 2,
                "resource_requirements_per_worker": {"num_cpus": 1, "num_gpus": 0},
            },
        ),
    ],
    ids=["xgboost", "lightgbm", "pytorch"],
)
def test_spec_round_trips_exactly(spec):
    assert TrainingSpec.from_dict(spec.to_dict()) == spec
    assert TrainingSpec.from_json(spec.to_json()) == spec
    assert TrainingSpec.from_json(spec.to_json()).to_json() == spec.to_json()
    assert json.loads(spec.to_json()) == spec.to_dict()  # plain JSON types only


def test_spec_normalises_what_users_write():
    spec = xgb_spec(input_cols="A, B ,C", train_data="/data/train", params={1: (1, 2)})
    assert spec.input_cols == ("A", "B", "C")
    assert spec.train_data == DataSpec(path="/data/train")
    assert spec.params == {"1": [1, 2]}  # JSON's form, so the spec equals its round trip
    assert spec.data == {"train": DataSpec(path="/data/train")}
    assert not spec.needs_session
    assert xgb_spec(artifact_stage_location="@DB.S.STAGE").needs_session
    assert torch_spec(dataset_map={"t": {"query": "select 1"}}).needs_session


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        ({"framework": "catboost"}, ConfigError, "framework must be one of"),
        ({"request_id": "../up"}, ConfigError, "cannot name a folder"),
        ({"label_col": None}, ConfigError, "needs label_col"),
        ({"input_cols": []}, ConfigError, "input_cols must be a non-empty list"),
        ({"n_estimators": 0}, ConfigError, "n_estimators must be an integer >= 1"),
        ({"n_estimators": True}, ConfigError, "n_estimators must be an integer >= 1"),
        ({"verbose_eval": -1}, ConfigError, "verbose_eval must be"),
        ({"hyper_params": {"lr": 1}}, ConfigError, "hyper_params apply to pytorch runs only"),
        (
            {"scaling_config": {"num_worker": 2}},
            ConfigError,
            r"scaling_config has unknown keys \['num_worker'\]; it takes \['num_workers'",
        ),
        ({"scaling_config": {"num_workers": 0}}, ScalingConfigError, "num_workers must be"),
        ({"failure_config": {"max_failures": -1}}, ConfigError, "max_failures"),
        ({"params": {"x": object()}}, ConfigError, "plain JSON values only"),
        ({"params": {"aws": {"password": "pw"}}}, ConfigError, "never holds secrets"),
        (
            {"artifact_stage_location": "s3://key:secret@bucket/models"},
            ConfigError,
            "carries credentials in its URL",
        ),
        ({"snowflake_connection": ""}, ConfigError, "snowflake_connection must be"),
    ],
)
def test_bad_boosting_specs_say_what_to_change(overrides, error, message):
    with pytest.raises(error, match=message):
        xgb_spec(**overrides)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"train_func": "not a path"}, "train_func must be an importable dotted path"),
        ({"label_col": "Y"}, "label_col apply to xgboost and lightgbm runs"),
        ({"dataset_map": {"train": {}}}, r"dataset_map\['train'\] names no data"),
        ({"dataset_map": ["train"]}, "dataset_map must map names to data"),
        (
            {"scaling_config": {"resource_requirements_per_worker": {"num_gpu": 1}}},
            r"resource_requirements_per_worker'\] has unknown keys \['num_gpu'\]",
        ),
        ({"hyper_params": {"token": "t"}}, "never holds secrets"),
    ],
)
def test_bad_pytorch_specs_say_what_to_change(overrides, message):
    with pytest.raises(ConfigError, match=message):
        torch_spec(**overrides)


def test_from_dict_refuses_unknown_keys_and_completeness_is_checked_on_demand():
    with pytest.raises(ConfigError, match=r"unknown training spec keys \['n_estimator'\]"):
        TrainingSpec.from_dict({**xgb_spec().to_dict(), "n_estimator": 3})
    with pytest.raises(ConfigError, match="must be JSON"):
        TrainingSpec.from_json("{not json")
    # data or a callable may join in process, so a spec without them is valid ...
    without_data = xgb_spec(train_data=None)
    without_func = torch_spec(train_func=None)
    # ... but not complete, which is what a caller shipping it elsewhere checks
    with pytest.raises(ConfigError, match="names no training data: set train_data"):
        without_data.check_complete()
    with pytest.raises(ConfigError, match="names no train_func"):
        without_func.check_complete()
    xgb_spec().check_complete()


def test_integration_layer_names_no_orchestrator():
    """Messages in core name no orchestrator: nothing in the layer's source does."""
    import shardtrain.integrations as integrations

    for path in Path(integrations.__file__).parent.glob("*.py"):
        text = path.read_text().lower()
        assert "airflow" not in text and "prefect" not in text, path.name


def test_build_estimators_from_plain_arguments():
    xgb = build_estimator(
        xgb_spec(
            params={"max_depth": 3},
            n_estimators=7,
            scaling_config={"num_workers": 2, "num_cpu_per_worker": 1},
            failure_config={"max_failures": 1, "checkpoint_frequency": 2},
        )
    )
    assert isinstance(xgb, XGBEstimator)
    assert xgb.n_estimators == 7 and xgb.params == {"max_depth": 3}
    assert xgb.objective == "reg:squarederror"  # the framework's default when None
    assert xgb.scaling_config == XGBScalingConfig(num_workers=2, num_cpu_per_worker=1)
    assert xgb.failure_config == FailureConfig(max_failures=1, checkpoint_frequency=2)
    lgb = build_estimator(xgb_spec(framework="lightgbm", objective="huber"))
    assert isinstance(lgb, LightGBMEstimator) and lgb.objective == "huber"
    with pytest.raises(ConfigError, match="build_estimator takes xgboost or lightgbm"):
        build_estimator(torch_spec())


def train():
    """A train_func importable by dotted path (``test_integrations:train``)."""
    import torch

    from shardtrain import get_context

    context = get_context()
    features = context.get_hyper_params()["features"]
    model = torch.nn.Linear(len(features), 1)
    for batch in context.get_dataset_map()["train"].get_shard().to_torch_dataset(batch_size=128):
        x = torch.stack([batch[f].float() for f in features], dim=1)
        model.zero_grad()
        torch.nn.functional.mse_loss(model(x).squeeze(1), batch[LABEL].float()).backward()
    if context.get_rank() == 0:
        torch.save(model.state_dict(), os.path.join(context.get_model_dir(), "model.pt"))


def test_build_distributor_with_nested_resources_and_dotted_paths():
    spec = torch_spec(
        scaling_config={
            "num_nodes": 1,
            "num_workers_per_node": 2,
            "resource_requirements_per_worker": {"num_cpus": 1, "num_gpus": 0},
        },
        failure_config={"max_failures": 3},
    )
    distributor = build_distributor(spec)
    assert isinstance(distributor, PyTorchDistributor)
    assert distributor.train_func is train
    assert distributor.scaling_config == PyTorchScalingConfig(
        num_nodes=1,
        num_workers_per_node=2,
        resource_requirements_per_worker=WorkerResourceConfig(num_cpus=1, num_gpus=0),
    )
    assert distributor.failure_config.max_failures == 3
    assert build_distributor(spec, train_func=print).train_func is print  # in-process wins
    with pytest.raises(ConfigError, match="has no train_func"):
        build_distributor(torch_spec(train_func=None))
    with pytest.raises(ConfigError, match="build_distributor takes pytorch specs"):
        build_distributor(xgb_spec())


def test_resolve_callable_and_module(tmp_path):
    assert resolve_callable("os.path:join") is os.path.join
    assert resolve_callable("os.path.join") is os.path.join
    with pytest.raises(ConfigError, match="cannot import train_func 'nope.mod:f'"):
        resolve_callable("nope.mod:f")
    with pytest.raises(ConfigError, match="must be callable or a dotted path"):
        resolve_callable(3)
    # A module imported under a name Ray workers cannot import (as orchestrators load DAG and
    # flow files) has its functions pickled by value.
    source = tmp_path / "generated_dag_file.py"
    source.write_text("def make():\n    return 42\n")
    spec = importlib.util.spec_from_file_location("unusual_name_0x1", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    from ray import cloudpickle

    try:
        assert resolve_callable(module.make) is module.make
        assert "unusual_name_0x1" in cloudpickle.list_registry_pickle_by_value()
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        del sys.modules["unusual_name_0x1"]
    assert resolve_module(None) is None
    assert resolve_module("collections:OrderedDict") == {}  # a class, called
    instance = type("M", (), {"load_state_dict": lambda self, d: None})()
    assert resolve_module(instance) is instance


def test_request_ids_are_safe_stable_and_distinct():
    first = request_id_from("dag__manual__2026-11-26T15:04:53+00:00__train")
    assert first == request_id_from("dag__manual__2026-11-26T15:04:53+00:00__train")
    assert ":" not in first and "+" not in first
    # identities that differ only in unsafe characters still get different ids
    assert request_id_from("a:b") != request_id_from("a+b")
    assert request_id_from("x" * 500).startswith("x" * 150)
    assert request_id_from("run", unique="u1", prefix="prefect-") != request_id_from(
        "run", unique="u2", prefix="prefect-"
    )


@pytest.fixture
def local_connections(monkeypatch):
    """Snowflake connections known to this process (connections.toml's form, through the
    connector's SNOWFLAKE_CONNECTIONS variable), on Snowpark's local emulation."""
    monkeypatch.setenv("SNOWFLAKE_CONNECTIONS", local_snowflake_connections("dev", "other"))


def test_session_from_a_named_connection_and_closing_it(local_connections):
    before = open_sessions()
    with closing_session(session_from_connection("dev")) as session:
        assert session.create_dataframe([[1]], schema=["X"]).count() == 1
        assert session in open_sessions()
    assert session._conn.is_closed() and open_sessions() == before
    with pytest.raises(
        ConfigError, match=r"no Snowflake connection named 'prod'.*\['dev', 'other'\]"
    ):
        session_from_connection("prod")


def test_a_session_run_training_opens_is_closed_when_the_run_fails(local_connections):
    """Reading a table that is not there fails before any worker starts; the session opened
    from the spec's connection is closed all the same."""
    before = open_sessions()
    spec = xgb_spec(train_data={"table": "NO_SUCH_TABLE"}, snowflake_connection="dev")
    with pytest.raises(Exception, match="NO_SUCH_TABLE"):
        run_training(spec)
    assert open_sessions() == before


def test_run_training_needs_its_data_and_train_func():
    with pytest.raises(ConfigError, match="names no training data"):
        run_training(xgb_spec(train_data=None))
    with pytest.raises(ConfigError, match="names no train_func"):
        run_training(torch_spec(train_func=None))
    with pytest.raises(ConfigError, match="reads data named 'train' and 'eval', not \\['extra'\\]"):
        run_training(xgb_spec(), data={"extra": None})
    with pytest.raises(ConfigError, match="takes a TrainingSpec"):
        run_training({"framework": "xgboost"})
