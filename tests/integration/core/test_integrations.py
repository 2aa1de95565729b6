"""The integration layer: specs (validation, exact JSON round trips, no secrets), building
estimators from plain arguments, data specs, Snowpark sessions, and run_training end to end."""

from __future__ import annotations

import os

import pytest

from shardtrain import (
    DataConnector,
    ModelArtifact,
    load_model,
)
from shardtrain.errors import ConfigError
from shardtrain.integrations import (
    DataSpec,
    TrainingSpec,
    connector_from_spec,
    run_training,
)
from tests.helpers import (
    FEATURES,
    LABEL,
    local_snowflake_connections,
    open_sessions,
    write_regression,
)
from tests.unit.core.test_integrations import xgb_spec


def torch_spec(**overrides) -> TrainingSpec:
    fields = dict(
        framework="pytorch",
        request_id="run-2",
        train_func="tests.integration.core.test_integrations:train",
    )
    return TrainingSpec(**{**fields, **overrides})


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


def test_connectors_from_data_specs(tmp_path, snowpark_session):
    path = write_regression(tmp_path / "d.parquet", rows=3)
    assert connector_from_spec(path).num_rows == 3
    assert connector_from_spec({"path": path, "table": None}).num_rows == 3
    assert connector_from_spec(DataSpec(path=path)).num_rows == 3
    assert connector_from_spec(None) is None and connector_from_spec({"table": ""}) is None
    dc = DataConnector.from_parquet(path)
    assert connector_from_spec(dc) is dc
    snowpark_session.create_dataframe([[1], [2]], schema=["X"]).write.save_as_table(
        "SPEC_T", mode="overwrite"
    )
    assert connector_from_spec({"table": "SPEC_T"}, session=snowpark_session).num_rows == 2
    with pytest.raises(ConfigError, match=r"one of table, query or path for the eval data"):
        connector_from_spec({"table": "T", "path": path}, name="eval")
    with pytest.raises(
        ConfigError, match="needs a Snowpark session: pass one, or name a Snowflake connection"
    ):
        connector_from_spec({"query": "select 1"})


@pytest.fixture
def local_connections(monkeypatch):
    """Snowflake connections known to this process (connections.toml's form, through the
    connector's SNOWFLAKE_CONNECTIONS variable), on Snowpark's local emulation."""
    monkeypatch.setenv("SNOWFLAKE_CONNECTIONS", local_snowflake_connections("dev", "other"))


def test_run_training_xgboost_from_a_json_spec(ray_cluster, tmp_path, local_connections):
    """The spec travels as JSON; the Snowflake stage's session is opened from the named
    connection (local emulation) and closed after the run."""
    train = write_regression(tmp_path / "train.parquet", rows=600, seed=0)
    evals = write_regression(tmp_path / "eval.parquet", rows=200, seed=1)
    spec = xgb_spec(
        request_id="integration-xgb",
        train_data=train,
        eval_data={"path": evals},
        n_estimators=4,
        scaling_config={"num_workers": 2, "num_cpu_per_worker": 1},
        artifact_stage_location="@ML.PUBLIC.MODELS",
        snowflake_connection="dev",
    )
    before = open_sessions()
    artifact = run_training(TrainingSpec.from_json(spec.to_json()))
    assert open_sessions() == before
    assert isinstance(artifact, ModelArtifact) and artifact.framework == "xgboost"
    assert artifact.uri == "@ML.PUBLIC.MODELS/model/integration-xgb"
    assert set(artifact.metrics) == {"train", "eval"} and artifact.input_cols == FEATURES


def test_run_training_lightgbm_with_a_connector_held_in_process(ray_cluster, tmp_path):
    train = write_regression(tmp_path / "train.parquet", rows=600)
    spec = xgb_spec(
        framework="lightgbm",
        request_id="integration-lgb",
        train_data=None,
        n_estimators=3,
        artifact_stage_location=str(tmp_path / "stage"),
        scaling_config={"num_workers": 2, "num_cpu_per_worker": 1},
    )
    artifact = run_training(spec, data={"train": DataConnector.from_parquet(train)})
    assert artifact.uri == str(tmp_path / "stage" / "model" / "integration-lgb")
    assert load_model(artifact).num_trees() == 3


def test_run_training_pytorch_by_dotted_path(ray_cluster, tmp_path):
    train_path = write_regression(tmp_path / "train.parquet", rows=300)
    spec = torch_spec(
        request_id="integration-torch",
        dataset_map={"train": {"path": train_path}},
        hyper_params={"features": FEATURES},
        scaling_config={"num_nodes": 1, "num_workers_per_node": 2},
        artifact_stage_location=str(tmp_path / "stage"),
    )
    artifact = run_training(TrainingSpec.from_json(spec.to_json()))
    assert artifact.framework == "pytorch" and artifact.model_file == "model.pt"
    assert set(load_model(artifact)) == {"weight", "bias"}
