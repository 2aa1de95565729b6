"""The benchmark harness's own logic: job plan, memory sampling, the report's ratios.

No timing is asserted anywhere: the harness measures, the tests check that what it
computes from its measurements is right.
"""

from __future__ import annotations

from bench.data import make_parquet
from bench.run_case import run_job


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
