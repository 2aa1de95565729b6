"""The benchmark harness's own logic: job plan, memory sampling, the report's ratios.

No timing is asserted anywhere: the harness measures, the tests check that what it
computes from its measurements is right.
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench.data import make_parquet
from bench.memory import PeakMemory
from bench.run_case import run_job


def test_peak_memory_counts_a_child_process_and_its_allocation():
    """Asserted on the child's own peak: in the full suite other tests' Ray workers exit while
    this runs, so the tree's sum can fall by more than the child adds."""
    grow = (
        "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(2)"
    )
    with PeakMemory(interval_s=0.02) as memory:
        child = subprocess.Popen([sys.executable, "-c", grow])
        assert child.wait() == 0
        time.sleep(0.05)
    # by pid: sampled between fork and exec, the child still has the parent's command line
    # (another title for the same process)
    peak = max(rss for title, rss in memory.by_process.items() if title.endswith(f" {child.pid}"))
    assert peak > 250 * 2**20, (memory.failed_samples, memory.by_process)
    assert memory.peak_tree >= memory.peak
    # its bytearray is anonymous memory: in the sum that counts shared pages once
    assert memory.peak_anon > 250 * 2**20


def test_a_job_runs_its_case_through_the_real_path(tmp_path):
    """The plain XGBoost case end to end on a tiny file: a figure per repeat, a real metric."""
    make_parquet(tmp_path / "train-2000.parquet", 2000, seed=0)
    make_parquet(tmp_path / "holdout.parquet", 500, seed=1)
    job = {
        "name": "xgboost-plain",
        "rows": 2000,
        "ray": False,
        "cases": [
            {
                "name": "xgboost/plain",
                "fn": "gbdt:xgboost_plain",
                "workers": "",
                "preload": ["xgboost"],
            },
        ],
    }
    (result,) = run_job(job, tmp_path, tmp_path, repeats=2)
    assert len(result["runs"]) == 2
    for run in result["runs"]:
        assert run["wall_s"] > 0 and run["peak_bytes"] >= run["idle_bytes"] > 0
        assert 0.3 < run["metric"] < 1.5  # noise 0.3; a broken model would sit near std(y) ~2.5
    assert (tmp_path / "plain.ubj").exists()
