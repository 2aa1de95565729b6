"""Retention of what failed runs leave on a stage (``shardtrain stage gc``), on a real local
folder and an fsspec memory:// stage: old checkpoints and unnamed attempts go, published
models and young leftovers stay."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shardtrain import open_stage
from shardtrain.errors import ConfigError
from shardtrain.runtime.retention import parse_age
from tests.unit.core.test_retention import _leave_failed_run

DAY = 86400.0


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
