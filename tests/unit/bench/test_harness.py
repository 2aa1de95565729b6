"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/bench/test_harness.py.]

The benchmark harness's own logic: job plan, memory sampling, the report's ratios.

No timing is asserted anywhere: the harness measures, the tests check that what it
computes from its measurements is right.
"""

from __future__ import annotations

from bench import report
from bench.cases import SCALING_ROWS, plan


def _implementation(name: str) -> str:
    return name.split("/", 1)[1].split(" (")[0]


def test_every_training_job_holds_one_implementation_and_quick_skips_ray_train_and_scaling():
    for quick in (True, False):
        jobs = plan(quick)
        for job in jobs:
            if job.name == "loading":  # reads only, timed side by side; no memory target
                continue
            assert len({_implementation(c.name) for c in job.cases}) == 1, job.name
        names = [c.name for job in jobs for c in job.cases]
        assert any("Ray Train" in n for n in names) is not quick
        sizes = {job.rows for job in jobs}
        assert sizes == ({250_000} if quick else set(SCALING_ROWS))


def _case(name, seconds, peak_gib=1.0, metric=None, rows=1000, anon_gib=None):
    runs = [
        {
            "wall_s": s,
            "peak_bytes": peak_gib * 2**30,
            "peak_tree_bytes": peak_gib * 2**30,
            "idle_bytes": 0,
            "metric": metric,
        }
        | ({"peak_anon_bytes": anon_gib * 2**30} if anon_gib is not None else {})
        for s in seconds
    ]
    return {"name": name, "rows": rows, "job": name, "runs": runs}


def _verdicts(cases, rows=1000):
    summary = [report.summarise(c) for c in cases]
    return {
        target: (measured, verdict)
        for target, _, measured, verdict in report.targets(summary, rows)
    }


def test_targets_use_medians_and_call_misses_missed():
    verdicts = _verdicts(
        [
            _case("xgboost/plain", [10, 10.5, 30], peak_gib=1.0, metric=0.300, anon_gib=0.8),
            _case("xgboost/shardtrain", [10.8, 11, 11.2], peak_gib=1.5, metric=0.302, anon_gib=1),
            _case("lightgbm/plain", [10], anon_gib=0.8),
            _case("lightgbm/shardtrain", [10]),  # recorded before anon memory was sampled
            _case("xgboost/Ray Train", [40, 50, 60]),
            _case("small job/shardtrain", [1.2, 1.4, 2.0]),
            _case("small job/Ray Train", [40, 41, 42]),
            _case("loading/pyarrow.dataset scan", [1.0, 1.0, 1.0]),
            _case("loading/DataConnector.iter_batches", [1.2, 1.2, 1.2]),
        ]
    )
    assert verdicts["xgboost: shardtrain time / plain"] == ("1.05x", "met")  # 11 / 10.5
    assert verdicts["xgboost: shardtrain time / Ray Train"] == ("0.22x", "MISSED")
    assert verdicts["xgboost: shardtrain peak memory / plain"] == ("1.50x", "MISSED")
    anon = "shardtrain peak anonymous memory / plain (shared pages once)"
    assert verdicts[f"xgboost: {anon}"] == ("1.25x", "met")
    assert verdicts[f"lightgbm: {anon}"] == ("not run", "-")
    assert verdicts["xgboost: holdout RMSE vs plain"] == ("+0.7%", "met")
    assert verdicts["small job: shardtrain (cold workers)"] == ("1.40 s", "met")
    assert verdicts["small job: Ray Train time / shardtrain"] == ("29.29x", "met")
    assert verdicts["DataConnector.iter_batches rows/s / pyarrow scan"] == ("0.83x", "MISSED")
    assert verdicts["xgboost: shardtrain (warm workers) time / plain"] == ("not run", "-")


def test_a_worse_model_misses_the_quality_target_even_when_faster():
    verdicts = _verdicts(
        [
            _case("lightgbm/plain", [10], metric=0.40),
            _case("lightgbm/shardtrain", [5], metric=0.42),
        ]
    )
    assert verdicts["lightgbm: shardtrain time / plain"] == ("0.50x", "met")
    assert verdicts["lightgbm: holdout RMSE vs plain"] == ("+5.0%", "MISSED")


def _raw(cases):
    return {
        "command": "python -m bench",
        "started": "now",
        "duration_s": 60,
        "rows": 1000,
        "repeats": 3,
        "json_name": "benchmarks.json",
        "cases": cases,
        "machine": {
            "cpu": "cpu",
            "cores": 2,
            "memory_gib": 24,
            "platform": "linux",
            "python": "3.11",
            "commit": "abc",
            "versions": {"ray": "2.60.0"},
        },
    }


def test_rewriting_the_report_keeps_the_hand_written_findings_and_shows_failures():
    failed = {**_case("xgboost/Ray Train", []), "error": "timed out after 3600 s"}
    first = report.render(_raw([_case("xgboost/plain", [1, 2, 3], metric=0.3), failed]), None)
    assert "| Ray Train | failed: timed out after 3600 s |" in first
    edited = first.replace(
        report.END_FINDINGS, "XGBoost: the gap is boosting.\n" + report.END_FINDINGS
    )
    second = report.render(_raw([]), report.extract_findings(edited))
    assert "XGBoost: the gap is boosting." in second
    assert second.count(report.BEGIN_FINDINGS) == 1
