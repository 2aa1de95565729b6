"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/core/test_stage.py.]

Stages against real storage: a local folder, memory://, S3 (moto server on loopback) and a
Snowpark local_testing stage."""

from __future__ import annotations

import pytest

from shardtrain.errors import StageError
from shardtrain.stage import open_stage
from shardtrain.stage.snowflake import parse_stage_uri

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


def test_uri_forms():
    assert parse_stage_uri("@DB.SCHEMA.STAGE/model/x") == ("@DB.SCHEMA.STAGE", "model/x")
    assert parse_stage_uri("@STAGE") == ("@STAGE", "")
    assert parse_stage_uri("@~/models") == ("@~", "models")
    assert parse_stage_uri('@"my db".S.ST/p') == ('@"my db".S.ST', "p")
    assert parse_stage_uri("DB_NAME.SCHEMA_NAME.STAGE_NAME") == (
        "@DB_NAME.SCHEMA_NAME.STAGE_NAME",
        "",
    )
    assert parse_stage_uri("models/v1") is None and parse_stage_uri("/tmp/a.b.c") is None


def test_errors_say_which_form_was_expected(tmp_path):
    with pytest.raises(StageError, match="needs a Snowpark session"):
        open_stage("@DB.SCHEMA.STAGE/models")
    with pytest.raises(StageError, match=r"unknown or unavailable stage scheme 'nosuch://'.*@DB"):
        open_stage("nosuch://bucket/models")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StageError, match="is a file"):
        open_stage(str(tmp_path / "file"))
    with pytest.raises(StageError, match="non-empty string"):
        open_stage("  ")


def test_unwritable_local_stage(tmp_path):
    """A write that the OS refuses (here: a folder where a file already sits, which fails
    even for root) is a StageError, and leaves no temp file behind."""
    stage = open_stage(str(tmp_path / "stage"))
    stage.write_bytes("a", b"file")
    with pytest.raises(StageError, match="cannot write .*writable stage location"):
        stage.write_bytes("a/b", b"x")
    assert stage.list() == ["a"]
