"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/core/test_validation.py.]

Bad input refused early and clearly; nothing outside a model folder read or written;
no credential of a URL in any message or URI. Nothing here needs Ray: every refusal comes
before a worker starts (a check that ran on the workers would need a cluster to fail)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from shardtrain.config import FailureConfig
from shardtrain.errors import (
    ConfigError,
    ModelIntegrityError,
    SchemaError,
    ShardtrainError,
)
from shardtrain.model.artifact import ModelArtifact, check_request_id
from shardtrain.model.load import fetch_model, load_model
from shardtrain.model.publish import MANIFEST, publish_model
from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator
from shardtrain.modeling.distributors.pytorch import PyTorchDistributor
from shardtrain.modeling.distributors.xgboost import XGBEstimator
from shardtrain.stage import open_stage

X = np.random.default_rng(0).random((100, 3))
Y = X @ np.array([1.0, -2.0, 0.5])
FRAME = pd.DataFrame({"A": X[:, 0], "B": X[:, 1], "C": X[:, 2], "Y": Y})


def model_folder(tmp_path, name="m", rounds=3):
    folder = tmp_path / name
    folder.mkdir()
    xgb.train({}, xgb.DMatrix(X, label=Y), rounds).save_model(str(folder / "model.ubj"))
    return folder


def published(tmp_path):
    artifact = publish_model(
        model_folder(tmp_path),
        framework="xgboost",
        stage=str(tmp_path / "stage"),
        request_id="r",
        model_file="model.ubj",
    )
    return artifact, tmp_path / "stage" / "model" / "r" / MANIFEST


def rewrite(manifest_path, **changes):
    manifest = json.loads(manifest_path.read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key)
        else:
            manifest[key] = value
    manifest_path.write_text(json.dumps(manifest))


def test_model_file_outside_the_folder_is_refused(tmp_path):
    artifact, manifest = published(tmp_path)
    outside = model_folder(tmp_path, "outside", rounds=9) / "model.ubj"  # a model no sum covers
    for model_file in (str(outside), "../../outside/model.ubj", "other.ubj"):
        rewrite(manifest, model_file=model_file)
        with pytest.raises(ModelIntegrityError, match="model_file .* is not one of its files"):
            load_model(artifact.uri)


@pytest.mark.parametrize("path", ["../../escaped/x.ubj", "/abs/x.ubj", "a/../../x", "a//b", ""])
def test_file_paths_outside_the_folder_are_refused_before_anything_is_written(tmp_path, path):
    artifact, manifest = published(tmp_path)
    entry = json.loads(manifest.read_text())["files"][0]
    rewrite(manifest, files=[{**entry, "path": path}], model_file=path or None)
    target = tmp_path / "a" / "b"
    with pytest.raises(ModelIntegrityError, match="not a plain relative path"):
        fetch_model(artifact.uri, target)
    assert not target.exists() and not (tmp_path / "escaped").exists()


def test_malformed_manifests_are_integrity_errors(tmp_path):
    artifact, manifest = published(tmp_path)
    original = manifest.read_text()
    cases = {
        "attempt": dict(attempt=None),
        "attempt folder": dict(attempt="../model"),
        "files": dict(files=[]),
        "size and sha256": dict(files=[{"path": "model.ubj"}]),
    }
    for what, change in cases.items():
        manifest.write_text(original)
        rewrite(manifest, **change)
        with pytest.raises(ModelIntegrityError, match="not a valid manifest") as info:
            load_model(artifact.uri)
        assert what.split()[0] in str(info.value)
    manifest.write_text(original)
    rewrite(manifest, framework=None)
    with pytest.raises(ModelIntegrityError, match="not a valid model record"):
        load_model(artifact.uri)
    with pytest.raises(ConfigError, match=r"the fields \['framework'\] are missing"):
        ModelArtifact.from_dict({"uri": "u", "request_id": "r"})


def test_links_leaving_the_folder_are_refused(tmp_path):
    folder = model_folder(tmp_path)
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("not part of the model")
    (folder / "notes.txt").symlink_to(secret)
    with pytest.raises(ConfigError, match="is a link to .*outside"):
        publish_model(
            folder, framework="xgboost", stage=str(tmp_path / "s"), model_file="model.ubj"
        )
    assert open_stage(str(tmp_path / "s")).list() == []
    (folder / "notes.txt").unlink()
    (folder / "alias.ubj").symlink_to(folder / "model.ubj")  # inside: published as a file
    artifact = publish_model(folder, framework="xgboost", stage=str(tmp_path / "s"))
    assert [f["path"] for f in artifact.files] == ["alias.ubj", "model.ubj"]
    assert artifact.files[0]["sha256"] == artifact.files[1]["sha256"]


URL_KEY, URL_SECRET = "AKIAURLKEY4242", "url-secret-never-shown-77"


@pytest.mark.parametrize("bad", ["a/b", "../../etc", "abc\n", "x y", "", ".hidden"])
def test_request_ids_refused_before_training(bad, tmp_path):
    with pytest.raises(ConfigError, match="request_id"):
        check_request_id(bad)
    for failure_config in (FailureConfig(checkpoint_frequency=1), FailureConfig(0, 0)):
        est = XGBEstimator(n_estimators=2, failure_config=failure_config)
        with pytest.raises(ConfigError, match="request_id"):
            est.fit(FRAME, ["A", "B"], "Y", artifact_stage_location=str(tmp_path), request_id=bad)
    with pytest.raises(ConfigError, match="request_id"):
        PyTorchDistributor(lambda: None).run(artifact_stage_location=str(tmp_path), request_id=bad)
    assert not list(tmp_path.iterdir())  # nothing trained, nothing checkpointed


@pytest.mark.parametrize("Est", [XGBEstimator, LightGBMEstimator])
def test_column_arguments_refused_before_training(Est, tmp_path):
    est = Est(n_estimators=2)

    def fit(cols, label):
        return est.fit(FRAME, cols, label, artifact_stage_location=str(tmp_path))

    with pytest.raises(ConfigError, match="label_col must name the label column, got None"):
        fit(["A", "B"], None)
    with pytest.raises(ConfigError, match="input_cols must be a list of column names"):
        fit("A", "Y")
    bad = "A[0]" if Est is XGBEstimator else 'A"0'
    with pytest.raises(SchemaError, match="cannot use the feature name") as info:
        est.fit(FRAME.rename(columns={"A": bad}), [bad, "B"], "Y")
    assert info.value.column == bad
    assert not list(tmp_path.iterdir())


def test_non_json_hyper_params_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="hyper_params must be JSON values"):
        PyTorchDistributor(lambda: None).run(
            hyper_params={"lr": object()}, artifact_stage_location=str(tmp_path)
        )
    assert issubclass(ConfigError, ShardtrainError)


def test_a_pandas_series_is_refused_clearly(tmp_path):
    with pytest.raises(ConfigError, match="pandas Series"):
        XGBEstimator(n_estimators=2).fit(
            FRAME["A"], ["A"], "Y", artifact_stage_location=str(tmp_path)
        )


def test_a_linked_file_in_a_torch_model_folder_travels_as_a_file(tmp_path):
    from shardtrain.modeling.distributors.pytorch_worker import pack, unpack

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.pt").write_bytes(b"w" * 64)
    (folder / "model.pt").symlink_to(folder / "weights.pt")  # absolute, inside the folder
    unpack(pack(folder), tmp_path / "out")
    assert (tmp_path / "out" / "model.pt").read_bytes() == b"w" * 64
    (tmp_path / "elsewhere").write_bytes(b"x")
    (folder / "extra.pt").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="outside"):
        pack(folder)


def test_a_quote_in_a_registered_name_is_refused_up_front(tmp_path):
    from shardtrain.model.registry import register_model

    artifact, _ = published(tmp_path)
    for name in ("it's", 'say "x"', "a`b"):
        with pytest.raises(ConfigError, match="contains a quote"):
            register_model(artifact, name=name, registry=f"sqlite:///{tmp_path / 'm.db'}")
