"""Publishing and loading models: manifests, checksums, atomic republish, crashes and
concurrency, on real storage."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap

import lightgbm as lgb
import numpy as np
import pytest
import torch
import xgboost as xgb

from shardtrain.errors import ModelIntegrityError
from shardtrain.model.artifact import ModelArtifact
from shardtrain.model.load import fetch_model, load_model, read_manifest
from shardtrain.model.publish import MANIFEST, publish_model
from shardtrain.stage import open_stage
from tests.integration.core.publish_workers import X, Y, publish_in_process
from tests.unit.core.test_publish import xgb_dir


def lgb_dir(tmp_path):
    booster = lgb.train({"verbose": -1, "num_leaves": 7}, lgb.Dataset(X, label=Y), 5)
    folder = tmp_path / "lgb"
    folder.mkdir()
    booster.save_model(str(folder / "model.txt"))
    return folder, booster


def torch_dir(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    folder = tmp_path / "torch"
    (folder / "extra").mkdir(parents=True)
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "extra" / "notes.json").write_text('{"epochs": 2}')
    return folder, model


@pytest.fixture(params=["local", "memory", "s3", "snowflake"])
def stage_kwargs(request, tmp_path):
    """What publish/load need to reach each backend."""
    name = request.node.name.replace("[", "-").replace("]", "")
    if request.param == "local":
        return {"stage": str(tmp_path / "stage")}
    if request.param == "memory":
        return {"stage": f"memory://publish/{name}"}
    if request.param == "s3":
        return {
            "stage": f"s3://shardtrain-test/{name}",
            "storage_options": request.getfixturevalue("s3_server"),
        }
    return {
        "stage": f"@DB.SCH.PUB_{abs(hash(name))}",
        "session": request.getfixturevalue("snowpark_session"),
    }


def reader_kwargs(kwargs):
    return {k: v for k, v in kwargs.items() if k in ("session", "storage_options")}


def test_publish_and_load_each_framework(stage_kwargs, tmp_path):
    folder, booster = xgb_dir(tmp_path)
    artifact = publish_model(
        folder,
        framework="xgboost",
        model_file="model.ubj",
        metrics={"train": {"rmse": 0.5}},
        params={"max_depth": 3},
        input_cols=["a", "b", "c", "d"],
        input_types={c: "double" for c in "abcd"},
        label_col="y",
        num_rows={"train": 200},
        source={"train": {"kind": "pandas"}},
        **stage_kwargs,
    )
    assert artifact.uri.endswith(f"/model/{artifact.request_id}")
    assert artifact.files[0]["path"] == "model.ubj" and len(artifact.files[0]["sha256"]) == 64
    assert artifact.versions["xgboost"] == xgb.__version__
    loaded = load_model(artifact, **reader_kwargs(stage_kwargs))
    np.testing.assert_array_equal(loaded.predict(xgb.DMatrix(X)), booster.predict(xgb.DMatrix(X)))
    by_uri = load_model(artifact.uri, **reader_kwargs(stage_kwargs))
    np.testing.assert_array_equal(by_uri.predict(xgb.DMatrix(X)), booster.predict(xgb.DMatrix(X)))

    folder, lgb_booster = lgb_dir(tmp_path)
    artifact = publish_model(folder, framework="lightgbm", model_file="model.txt", **stage_kwargs)
    loaded = load_model(artifact.to_dict(), **reader_kwargs(stage_kwargs))
    np.testing.assert_allclose(loaded.predict(X), lgb_booster.predict(X))

    folder, model = torch_dir(tmp_path)
    artifact = publish_model(folder, framework="pytorch", model_file="model.pt", **stage_kwargs)
    assert [f["path"] for f in artifact.files] == ["extra/notes.json", "model.pt"]
    state = load_model(artifact, **reader_kwargs(stage_kwargs))
    assert set(state) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value)
    fetched = fetch_model(artifact, tmp_path / "fetched", **reader_kwargs(stage_kwargs))
    assert (tmp_path / "fetched" / "extra" / "notes.json").read_text() == '{"epochs": 2}'
    assert fetched == artifact


def test_republish_same_request_id_replaces_atomically(stage_kwargs, tmp_path):
    first, _ = xgb_dir(tmp_path, rounds=2)
    second, booster = xgb_dir(tmp_path, rounds=7)
    old = publish_model(
        first, framework="xgboost", model_file="model.ubj", request_id="retry", **stage_kwargs
    )
    new = publish_model(
        second, framework="xgboost", model_file="model.ubj", request_id="retry", **stage_kwargs
    )
    assert new.uri == old.uri and new.files != old.files
    loaded = load_model(new.uri, **reader_kwargs(stage_kwargs))
    assert loaded.num_boosted_rounds() == 7
    np.testing.assert_array_equal(loaded.predict(xgb.DMatrix(X)), booster.predict(xgb.DMatrix(X)))
    with pytest.raises(ModelIntegrityError, match="published again"):
        load_model(old, **reader_kwargs(stage_kwargs))
    stage = open_stage(new.uri, **reader_kwargs(stage_kwargs))
    attempts = {p.split("/")[0] for p in stage.list() if p.startswith("attempt-")}
    if "session" in stage_kwargs:  # local_testing cannot delete: the stale attempt is unread
        assert len(attempts) == 2
    else:
        assert attempts == {read_manifest(stage)["attempt"]}


def test_corrupted_file_refused(stage_kwargs, tmp_path):
    folder, _ = xgb_dir(tmp_path)
    artifact = publish_model(folder, framework="xgboost", model_file="model.ubj", **stage_kwargs)
    stage = open_stage(artifact.uri, **reader_kwargs(stage_kwargs))
    attempt = read_manifest(stage)["attempt"]
    data = bytearray(stage.read_bytes(f"{attempt}/model.ubj"))
    data[len(data) // 2] ^= 0xFF
    stage.write_bytes(f"{attempt}/model.ubj", bytes(data))
    with pytest.raises(ModelIntegrityError, match="does not match the manifest") as info:
        load_model(artifact.uri, **reader_kwargs(stage_kwargs))
    assert info.value.file == "model.ubj"


def test_publisher_killed_before_manifest(tmp_path):
    """A publisher SIGKILLed after its model files, before its manifest, leaves nothing that
    load_model accepts; a later publish under the same request_id succeeds."""
    folder, booster = xgb_dir(tmp_path)
    stage_dir = tmp_path / "stage"
    script = textwrap.dedent(f"""
        import os, signal
        import shardtrain.model.publish as publish
        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        publish._write_manifest = die
        publish.publish_model({str(folder)!r}, framework="xgboost", stage={str(stage_dir)!r},
                              model_file="model.ubj", request_id="crash")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == -9
    files = open_stage(str(stage_dir)).list("model/crash")
    assert files and all(f.endswith("model.ubj") for f in files)  # files written, no manifest
    with pytest.raises(ModelIntegrityError, match="no _MANIFEST.json"):
        load_model(str(stage_dir / "model" / "crash"))
    artifact = publish_model(
        folder,
        framework="xgboost",
        stage=str(stage_dir),
        model_file="model.ubj",
        request_id="crash",
    )
    np.testing.assert_array_equal(
        load_model(artifact).predict(xgb.DMatrix(X)), booster.predict(xgb.DMatrix(X))
    )
    assert open_stage(str(stage_dir)).list("model/crash") == sorted(
        [
            "model/crash/_MANIFEST.json",
            f"model/crash/{read_manifest(open_stage(artifact.uri))['attempt']}/model.ubj",
        ]
    )


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_eight_concurrent_publishers(backend, tmp_path, request):
    if backend == "local":
        stage, options = str(tmp_path / "stage"), None
    else:
        stage, options = "s3://shardtrain-test/concurrent", request.getfixturevalue("s3_server")
    context = multiprocessing.get_context("spawn")
    with context.Pool(8) as pool:
        results = pool.map(
            publish_in_process, [(stage, options, i, str(tmp_path)) for i in range(8)]
        )
    artifacts = [ModelArtifact.from_dict(a) for a, _ in results]
    assert len({a.request_id for a in artifacts}) == 8
    for artifact, (_, predictions) in zip(artifacts, results, strict=True):
        loaded = load_model(artifact, storage_options=options)
        np.testing.assert_allclose(loaded.predict(xgb.DMatrix(X)), predictions, rtol=1e-6)


def test_no_credentials_in_manifest_or_artifact(s3_server, tmp_path):
    from snowflake.snowpark import Session

    from shardtrain.integrations import close_session

    folder, _ = xgb_dir(tmp_path)
    artifact = publish_model(
        folder,
        framework="xgboost",
        stage="s3://shardtrain-test/creds",
        storage_options=s3_server,
        model_file="model.ubj",
    )
    stage = open_stage(artifact.uri, storage_options=s3_server)
    texts = [artifact.to_json(), stage.read_bytes(MANIFEST).decode(), repr(stage)]
    session = Session.builder.configs(
        {"local_testing": True, "user": "alice", "password": "pw-never-written-9431"}
    ).create()
    try:
        sf = publish_model(
            folder,
            framework="xgboost",
            stage="@DB.S.CREDS",
            session=session,
            model_file="model.ubj",
        )
        texts += [sf.to_json(), open_stage(sf.uri, session=session).read_bytes(MANIFEST).decode()]
    finally:
        close_session(session)  # and its exit hook (see tests/integration/conftest.py)
    for text in texts:
        for secret in (s3_server["key"], s3_server["secret"], "pw-never-written-9431"):
            assert secret not in text
