"""The main job (`make demo`) runs end to end on the embedded defaults."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from shardtrain import load_model

pytestmark = pytest.mark.subprocess  # the demo trains on real Ray


def test_demo_trains_on_ray_and_prints_the_model_location(tmp_path):
    env = dict(os.environ, SHARDTRAIN_HOME=str(tmp_path))
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, "-m", "shardtrain.demo", "--rows", "20000", "--rounds", "20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained on 2 Ray workers" in result.stdout
    assert re.search(r"\[20\]\ttrain-rmse:[\d.]+\teval-rmse:[\d.]+", result.stdout)
    location = re.search(r"model location: (\S+)", result.stdout).group(1)
    assert location.startswith(str(tmp_path / "stage" / "model"))
    assert load_model(location).num_boosted_rounds() == 20
