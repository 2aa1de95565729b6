"""Retention of what failed runs leave on a stage (``shardtrain stage gc``), on a real local
folder and an fsspec memory:// stage: old checkpoints and unnamed attempts go, published
models and young leftovers stay."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from shardtrain import open_stage, publish_model
from shardtrain.errors import ConfigError
from shardtrain.model.load import fetch_model
from shardtrain.runtime.retention import collect_garbage, find_leftovers, parse_age
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


def test_ages_and_the_cli(tmp_path):
    assert parse_age("7d") == 7 * DAY and parse_age("12h") == 43200 and parse_age("90") == 90
    with pytest.raises(ConfigError, match="7d, 12h"):
        parse_age("a week")
    stage = open_stage(str(tmp_path / "stage"))
    _leave_failed_run(stage, "failed")
    state = json.loads(stage.read_bytes("checkpoints/failed/state.json"))
    state["saved_at"] -= 30 * DAY
    stage.write_bytes("checkpoints/failed/state.json", json.dumps(state).encode())

    def gc(*args):
        return subprocess.run(
            [sys.executable, "-m", "shardtrain", "stage", "gc", str(tmp_path / "stage"), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    dry = gc("--older-than", "7d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "checkpoints/failed" in dry.stdout and "would remove 2" in dry.stdout
    assert stage.exists("checkpoints/failed/state.json")
    done = gc("--older-than", "7d")
    assert done.returncode == 0 and "removed 2" in done.stdout, done.stdout + done.stderr
    assert not stage.list("checkpoints") and not stage.list("model")
    bad = gc("--older-than", "soon")
    assert bad.returncode == 2 and "7d, 12h" in bad.stderr
