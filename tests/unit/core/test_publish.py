"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/core/test_publish.py.]

Publishing and loading models: manifests, checksums, atomic republish, crashes and
concurrency, on real storage."""

from __future__ import annotations

import json

import pytest
import xgboost as xgb

from shardtrain.errors import ConfigError, ModelIntegrityError
from shardtrain.model.artifact import ModelArtifact, new_request_id
from shardtrain.model.load import load_model
from shardtrain.model.publish import MANIFEST, publish_model
from shardtrain.stage import open_stage
from tests.integration.core.publish_workers import X, Y


def xgb_dir(tmp_path, rounds=5):
    booster = xgb.train({"max_depth": 3}, xgb.DMatrix(X, label=Y), rounds)
    folder = tmp_path / f"xgb{rounds}"
    folder.mkdir()
    booster.save_model(str(folder / "model.ubj"))
    return folder, booster


def test_manifest_is_whole_and_matches_the_artifact(tmp_path):
    folder, _ = xgb_dir(tmp_path)
    artifact = publish_model(
        folder,
        framework="xgboost",
        stage=str(tmp_path / "s"),
        model_file="model.ubj",
        request_id="run-1",
    )
    manifest = json.loads((tmp_path / "s" / "model" / "run-1" / MANIFEST).read_text())
    assert manifest["format"] == "shardtrain.model/1"
    assert ModelArtifact.from_dict(manifest) == artifact
    assert manifest["files"] == artifact.files and manifest["framework"] == "xgboost"
    attempt_file = tmp_path / "s" / "model" / "run-1" / manifest["attempt"] / "model.ubj"
    assert attempt_file.stat().st_size == artifact.files[0]["size"]


def test_location_without_manifest_is_not_a_model(tmp_path):
    stage = open_stage(str(tmp_path / "s"))
    stage.write_bytes("model/half/attempt-x/model.ubj", b"partial")
    with pytest.raises(ModelIntegrityError, match="has no _MANIFEST.json"):
        load_model(stage.child_uri("model/half"))
    stage.write_bytes("model/half/_MANIFEST.json", b"{not json")
    with pytest.raises(ModelIntegrityError, match="not valid JSON"):
        load_model(stage.child_uri("model/half"))


def test_artifact_json_round_trip_and_request_ids():
    artifact = ModelArtifact(
        uri="@DB.S.ST/model/r",
        framework="lightgbm",
        request_id="r",
        model_file="model.txt",
        metrics={"train": {"l2": 0.25}, "eval": {"l2": 0.5}},
        params={"num_leaves": 31},
        input_cols=["a"],
        input_types={"a": "float"},
        label_col="y",
        num_rows={"train": 10},
        source={"train": {"kind": "snowpark", "table": "T"}},
        files=[{"path": "model.txt", "size": 3, "sha256": "0" * 64}],
        versions={"python": "3"},
    )
    assert ModelArtifact.from_json(artifact.to_json()) == artifact
    assert ModelArtifact.from_dict(json.loads(json.dumps(artifact.to_dict()))) == artifact
    ids = [new_request_id() for _ in range(200)]
    assert len(set(ids)) == 200 and ids == sorted(ids)
    for bad in ("../x", "a/b", "", ".hidden", "x" * 201):
        with pytest.raises(ConfigError, match="request_id"):
            ModelArtifact(uri="u", framework="xgboost", request_id=bad)
    with pytest.raises(ConfigError, match="framework must be one of"):
        ModelArtifact(uri="u", framework="sklearn", request_id="r")
    with pytest.raises(ConfigError, match="JSON-safe"):
        ModelArtifact(uri="u", framework="xgboost", request_id="r", params={"f": object()})


def test_publish_refuses_empty_folder_and_unknown_model_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="nothing to publish"):
        publish_model(tmp_path / "empty", framework="xgboost", stage=str(tmp_path / "s"))
    folder, _ = xgb_dir(tmp_path)
    with pytest.raises(ConfigError, match="model_file 'nope.ubj' is not among"):
        publish_model(folder, framework="xgboost", stage=str(tmp_path / "s"), model_file="nope.ubj")
    assert open_stage(str(tmp_path / "s")).list() == []  # nothing half-written
