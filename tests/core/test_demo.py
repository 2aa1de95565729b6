"""The main job (`make demo`) runs end to end on the embedded defaults."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_reads_every_row_once_across_ray_workers(tmp_path):
    env = dict(os.environ, SHARDTRAIN_HOME=str(tmp_path))
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, "-m", "shardtrain.demo", "--rows", "20000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0: 10,000 rows read from its own shard" in result.stdout
    assert "rank 1: 10,000 rows read from its own shard" in result.stdout
    assert "all 20,000 rows read exactly once across 2 Ray workers" in result.stdout
    assert (tmp_path / "demo" / "regression-20000").is_dir()
