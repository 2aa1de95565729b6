"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/core/test_retention.py.]

Retention of what failed runs leave on a stage (``shardtrain stage gc``), on a real local
folder and an fsspec memory:// stage: old checkpoints and unnamed attempts go, published
models and young leftovers stay."""

from __future__ import annotations

import time

import pytest

from shardtrain import open_stage, publish_model
from shardtrain.model.load import fetch_model
from shardtrain.runtime.retention import collect_garbage, find_leftovers
from shardtrain.runtime.run import Checkpoint, CheckpointStore

DAY = 86400.0


def _model_dir(tmp_path, name="m"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.json").write_text('{"weights": [1, 2, 3]}')
    return folder


def _leave_failed_run(stage, request_id):
    """What a run that died leaves: a checkpoint and an attempt folder no manifest names."""
    CheckpointStore(stage, request_id, "model.json").save(Checkpoint(7, b"partial", {}))
    stage.write_bytes(
        f"model/{request_id}/attempt-20260101T000000000000Z-deadbeef/model.json", b"x"
    )


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_gc_removes_old_leftovers_and_keeps_published_models(kind, tmp_path):
    uri = str(tmp_path / "stage") if kind == "local" else f"memory://gc-{time.time_ns()}"
    stage = open_stage(uri)
    published = publish_model(
        _model_dir(tmp_path),
        framework="xgboost",
        stage=stage,
        request_id="good",
        model_file="model.json",
    )
    # A newer publish of the same id that died before its manifest: an unnamed attempt.
    stage.write_bytes("model/good/attempt-20260101T000000000000Z-0000dead/model.json", b"old")
    _leave_failed_run(stage, "failed")

    now = time.time() + 8 * DAY  # a week and a day later
    leftovers = find_leftovers(stage, 7 * DAY, now=now)
    assert sorted(lo.path for lo in leftovers) == [
        "checkpoints/failed",
        "model/failed/attempt-20260101T000000000000Z-deadbeef",
        "model/good/attempt-20260101T000000000000Z-0000dead",
    ]
    assert collect_garbage(stage, 7 * DAY, dry_run=True, now=now) == leftovers
    assert stage.exists("checkpoints/failed/state.json")  # a dry run removes nothing

    collect_garbage(stage, 7 * DAY, now=now)
    assert find_leftovers(stage, 7 * DAY, now=now) == []
    assert not stage.list("checkpoints/failed") and not stage.list("model/failed")
    assert fetch_model(published.uri, tmp_path / "fetched").files == published.files


def test_young_leftovers_stay(tmp_path):
    stage = open_stage(str(tmp_path / "stage"))
    CheckpointStore(stage, "running", "model.json").save(Checkpoint(3, b"x", {}))
    stage.write_bytes("model/running/attempt-20260101T000000000000Z-00000001/f", b"x")
    now = time.time()  # the checkpoint was just saved; the attempt is old
    assert [lo.path for lo in find_leftovers(stage, 7 * DAY, now=now)] == [
        "model/running/attempt-20260101T000000000000Z-00000001"
    ]
    assert find_leftovers(stage, 10_000 * DAY, now=now) == []
