"""Stages against real storage: a local folder, memory://, S3 (moto server on loopback) and a
Snowpark local_testing stage."""

from __future__ import annotations

import pytest

from shardtrain.errors import StageError
from shardtrain.stage import open_stage
from shardtrain.stage.local import LocalStage
from shardtrain.stage.snowflake import SnowflakeStage

BACKENDS = ["local", "memory", "s3", "snowflake"]


@pytest.fixture(params=BACKENDS)
def stage(request, tmp_path):
    name = request.node.name.replace("[", "-").replace("]", "")
    if request.param == "local":
        return open_stage(str(tmp_path / "stage"))
    if request.param == "memory":
        return open_stage(f"memory://stages/{name}")
    if request.param == "s3":
        options = request.getfixturevalue("s3_server")
        return open_stage(f"s3://shardtrain-test/{name}", storage_options=options)
    session = request.getfixturevalue("snowpark_session")
    return open_stage(f"@DB.SCHEMA.STAGE_{abs(hash(name))}/models", session=session)


def test_bytes_round_trip_and_overwrite(stage):
    assert not stage.exists("a/b.bin")
    stage.write_bytes("a/b.bin", b"\x00first")
    assert stage.exists("a/b.bin") and stage.read_bytes("a/b.bin") == b"\x00first"
    stage.write_bytes("a/b.bin", b"second")
    assert stage.read_bytes("a/b.bin") == b"second"
    with pytest.raises(StageError, match="does not exist"):
        stage.read_bytes("a/missing.bin")


def test_dirs_round_trip_and_list(stage, tmp_path):
    source = tmp_path / "src"
    (source / "sub" / "deeper").mkdir(parents=True)
    (source / "top.txt").write_text("top")
    (source / "sub" / "mid.txt").write_text("mid")
    (source / "sub" / "deeper" / "low.bin").write_bytes(bytes(range(256)) * 100)
    written = stage.upload_dir(source, "runs/r1")
    assert written == ["runs/r1/sub/deeper/low.bin", "runs/r1/sub/mid.txt", "runs/r1/top.txt"]
    stage.write_bytes("runs/r2/other.txt", b"x")
    assert stage.list("runs/r1") == written
    assert stage.list("runs/r1/sub") == written[:2]
    assert stage.list("runs") == written + ["runs/r2/other.txt"]
    assert stage.list("nothing-here") == []
    target = tmp_path / "back"
    stage.download_dir("runs/r1", target)
    assert (target / "top.txt").read_text() == "top"
    assert (target / "sub" / "deeper" / "low.bin").read_bytes() == bytes(range(256)) * 100


@pytest.mark.parametrize("bad", ["../escape", "a/../../b", "/abs/path", "a//b", "./a", "a\\b", ""])
def test_unsafe_paths_refused(stage, bad):
    with pytest.raises(StageError, match="unsafe stage path|empty path"):
        stage.write_bytes(bad, b"x")
    with pytest.raises(StageError):
        stage.read_bytes(bad)


def test_bare_vendor_form_and_default(snowpark_session, tmp_path, monkeypatch):
    stage = open_stage("DB_NAME.SCHEMA_NAME.STAGE_NAME", session=snowpark_session)
    assert isinstance(stage, SnowflakeStage) and stage.uri == "@DB_NAME.SCHEMA_NAME.STAGE_NAME"
    monkeypatch.setenv("SHARDTRAIN_HOME", str(tmp_path / "home"))
    default = open_stage()
    assert isinstance(default, LocalStage) and default.uri == str(tmp_path / "home" / "stage")
    assert open_stage(f"file://{tmp_path}/x").uri == str(tmp_path / "x")


def test_unreachable_s3_endpoint_is_a_stage_error():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {
        "key": "k",
        "secret": "s",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2},
    }
    with pytest.raises(StageError, match="cannot reach the stage"):
        open_stage("s3://bucket/models", storage_options=options)
