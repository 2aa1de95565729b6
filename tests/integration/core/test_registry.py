"""Registering published models in a real MLflow registry (sqlite), and the Snowflake Model
Registry's call contract."""

from __future__ import annotations

import sys
import types

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import xgboost as xgb

from shardtrain.errors import ConfigError, ModelIntegrityError
from shardtrain.model.load import load_model, read_manifest
from shardtrain.model.publish import publish_model
from shardtrain.model.registry import RegisteredModel, register_model
from shardtrain.stage import open_stage

COLS = ["a", "b", "c", "d"]
X = np.random.default_rng(0).random((300, 4)).astype(np.float32)
Y = X @ np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)
TYPES = {c: "float" for c in COLS}


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)
        )

    def forward(self, x):
        return self.layers(x)


def publish(tmp_path, framework):
    folder = tmp_path / framework
    folder.mkdir()
    if framework == "xgboost":
        booster = xgb.train({"max_depth": 3}, xgb.DMatrix(X, label=Y, feature_names=COLS), 10)
        booster.save_model(str(folder / "model.ubj"))
        model_file = "model.ubj"
    elif framework == "lightgbm":
        booster = lgb.train({"verbose": -1}, lgb.Dataset(X, label=Y, feature_name=COLS), 10)
        booster.save_model(str(folder / "model.txt"))
        model_file = "model.txt"
    else:
        torch.save(Net().state_dict(), folder / "model.pt")
        model_file = "model.pt"
    return publish_model(
        folder,
        framework=framework,
        stage=str(tmp_path / "stage"),
        model_file=model_file,
        input_cols=COLS,
        input_types=TYPES,
        metrics={"eval": {"rmse": 0.25}},
        params={"rounds": 10},
        request_id=f"{framework}-run",
    )


def reference_predictions(artifact):
    model = load_model(artifact)
    if artifact.framework == "xgboost":
        return model.predict(xgb.DMatrix(X, feature_names=COLS))
    if artifact.framework == "lightgbm":
        return model.predict(X)
    net = Net()
    net.load_state_dict(model)
    with torch.no_grad():
        return net(torch.from_numpy(X)).numpy().reshape(-1)


@pytest.mark.parametrize("framework", ["xgboost", "lightgbm", "pytorch"])
def test_register_and_load_back_through_mlflow(framework, tmp_path):
    artifact = publish(tmp_path, framework)
    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registered = register_model(
        artifact,
        name=f"{framework}_model",
        registry=registry,
        tags={"team": "ml"},
        module=Net() if framework == "pytorch" else None,
    )
    assert registered.version == "1" and registered.created
    assert registered.source_uri == artifact.uri and registered.request_id == artifact.request_id
    assert RegisteredModel.from_dict(registered.to_dict()) == registered
    mlflow.set_tracking_uri(registry)
    mlflow.set_registry_uri(registry)
    loaded = mlflow.pyfunc.load_model(registered.model_uri)
    if framework == "pytorch":
        got = np.asarray(loaded.predict(X)).reshape(-1)
    else:
        got = np.asarray(loaded.predict(pd.DataFrame(X, columns=COLS))).reshape(-1)
    np.testing.assert_allclose(got, reference_predictions(artifact), rtol=1e-5, atol=1e-6)
    client = mlflow.MlflowClient(tracking_uri=registry, registry_uri=registry)
    version = client.get_model_version(f"{framework}_model", "1")
    assert version.tags["shardtrain.request_id"] == artifact.request_id
    assert version.tags["shardtrain.source_uri"] == artifact.uri
    assert version.tags["team"] == "ml"
    run = client.get_run(version.run_id)
    assert run.data.metrics["eval_rmse"] == 0.25 and run.data.params["rounds"] == "10"
    if framework != "pytorch":
        assert [i["name"] for i in loaded.metadata.get_input_schema().to_dict()] == COLS


def test_registering_the_same_artifact_twice_returns_the_existing_version(tmp_path):
    artifact = publish(tmp_path, "xgboost")
    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = register_model(artifact, name="m", registry=registry)
    again = register_model(artifact.to_dict(), name="m", registry=registry)
    assert again.version == first.version and not again.created
    client = mlflow.MlflowClient(tracking_uri=registry, registry_uri=registry)
    assert len(client.search_model_versions("name = 'm'")) == 1


def test_default_registry_is_sqlite_under_shardtrain_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDTRAIN_HOME", str(tmp_path / "home"))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    registered = register_model(publish(tmp_path, "lightgbm"), name="default_model")
    assert (tmp_path / "home" / "mlflow" / "mlflow.db").is_file()
    assert registered.model_uri == "models:/default_model/1"
    # the model files live beside the registry, not in the current directory (./mlruns)
    assert list((tmp_path / "home" / "mlflow" / "mlflow-artifacts").rglob("MLmodel"))
    assert list(workdir.iterdir()) == []


def test_tampered_artifact_is_refused_and_nothing_registered(tmp_path):
    artifact = publish(tmp_path, "xgboost")
    stage = open_stage(artifact.uri)
    path = f"{read_manifest(stage)['attempt']}/model.ubj"
    data = bytearray(stage.read_bytes(path))
    data[-5] ^= 0x01
    stage.write_bytes(path, bytes(data))
    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ModelIntegrityError, match="does not match the manifest"):
        register_model(artifact, name="tampered", registry=registry)
    client = mlflow.MlflowClient(tracking_uri=registry, registry_uri=registry)
    assert client.search_model_versions("name = 'tampered'") == []
    with pytest.raises(ConfigError, match="module="):
        register_model(publish(tmp_path, "pytorch"), name="torch", registry=registry)


def test_snowflake_registry_call_contract(tmp_path, monkeypatch, snowpark_session):
    """A recording stand-in for `snowflake.ml.registry.Registry`: no live Snowflake account
    (and so no real Model Registry) is reachable here. It checks what shardtrain calls:
    Registry(session=...), get_model(name).version(v) for idempotency, and log_model with
    the loaded booster, a sample input carrying the signature's columns, metrics, comment."""
    calls = []

    class Registry:
        logged: dict = {}

        def __init__(self, session):
            calls.append(("init", session))

        def get_model(self, name):
            registry = self

            class Model:
                def version(self, version_name):
                    if (name, version_name) not in registry.logged:
                        raise KeyError(version_name)
                    return registry.logged[(name, version_name)]

            return Model()

        def log_model(
            self, model, *, model_name, version_name, sample_input_data, metrics, comment
        ):
            calls.append(
                ("log_model", model, model_name, version_name, sample_input_data, metrics, comment)
            )
            self.logged[(model_name, version_name)] = object()

    module = types.ModuleType("snowflake.ml.registry")
    module.Registry = Registry
    monkeypatch.setitem(sys.modules, "snowflake.ml", types.ModuleType("snowflake.ml"))
    monkeypatch.setitem(sys.modules, "snowflake.ml.registry", module)

    artifact = publish(tmp_path, "xgboost")
    registered = register_model(
        artifact, name="CREDIT_RISK", registry="snowflake", session=snowpark_session
    )
    again = register_model(
        artifact, name="CREDIT_RISK", registry="snowflake", session=snowpark_session
    )
    logs = [c for c in calls if c[0] == "log_model"]
    assert len(logs) == 1 and registered.created and not again.created
    _, model, name, version_name, sample, metrics, comment = logs[0]
    assert isinstance(model, xgb.Booster) and name == "CREDIT_RISK"
    assert version_name == registered.version == "V_XGBOOST_RUN"
    assert list(sample.columns) == COLS and metrics == {"eval_rmse": 0.25}
    assert artifact.uri in comment
    assert calls[0] == ("init", snowpark_session)
    with pytest.raises(ConfigError, match="needs a Snowpark session"):
        register_model(artifact, name="X", registry="snowflake")


def test_an_unreachable_mlflow_server_fails_fast_and_clearly(tmp_path):
    """MLflow's client retries a dead server for minutes; the probe says so in seconds, before
    the artifact is read, and keeps the URL's credentials out of the message."""
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    started = time.monotonic()
    with pytest.raises(ConfigError, match="cannot reach the MLflow tracking server") as error:
        register_model(
            str(tmp_path / "never-read"),
            name="m",
            registry=f"http://admin:hunter2@127.0.0.1:{port}",
        )
    assert time.monotonic() - started < 10
    assert "hunter2" not in str(error.value) and f"127.0.0.1:{port}" in str(error.value)
