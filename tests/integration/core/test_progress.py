"""Progress of a fit: round i of n, elapsed and remaining, at a readable rate in the log and
to observers (an orchestrator's progress bar), always moving forward, ending at n of n."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from shardtrain.runtime import progress as progress_module
from shardtrain.runtime.progress import (
    LINE_EVERY_S,
    Progress,
    observe_progress,
)


@pytest.fixture(scope="module")
def _ray(ray_cluster):
    from shardtrain.runtime import worker_group

    yield
    worker_group.shutdown_workers()


def test_a_real_fit_reports_monotone_progress_ending_at_n_of_n(_ray, tmp_path, monkeypatch, caplog):
    from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig

    monkeypatch.setattr(progress_module, "LINE_MIN_GAP_S", 0.0)  # lines at each 10%, however fast
    monkeypatch.setattr(progress_module, "OBSERVER_EVERY_S", 0.0)  # every round to the observer
    caplog.set_level(logging.INFO, logger="shardtrain")
    rng = np.random.default_rng(0)
    data = pd.DataFrame(rng.standard_normal((2000, 4)), columns=list("ABCD"))
    data["Y"] = data["A"] * 2 + rng.normal(0, 0.1, 2000)
    seen: list[Progress] = []
    estimator = XGBEstimator(
        n_estimators=40, scaling_config=XGBScalingConfig(num_workers=2, num_cpu_per_worker=1)
    )
    with observe_progress(seen.append):
        estimator.fit(data, list("ABCD"), "Y", artifact_stage_location=str(tmp_path))
    steps = [p.step for p in seen]
    assert steps == list(range(1, 41)) + [40]  # every round once, then the last update
    assert seen[-1].done and (seen[-1].step, seen[-1].total) == (40, 40)
    assert [p.percent for p in seen] == sorted(p.percent for p in seen)
    assert [p.elapsed_s for p in seen] == sorted(p.elapsed_s for p in seen)
    assert all(p.remaining_s is not None for p in seen[1:])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress: ")]
    parsed = [Progress.parse(line) for line in lines]
    steps = [p.step for p in parsed]
    assert steps[:-1] == sorted(set(steps[:-1])) and 10 <= len(steps) <= 12
    for before, after in zip([Progress(0, 40, 0.0, None), *parsed], parsed[:-1], strict=False):
        # 10% more rounds (4), or 10 s since the last line (a slow start: the worker pool)
        assert after.step - before.step >= 4 or after.elapsed_s - before.elapsed_s >= LINE_EVERY_S
    assert lines[-1].startswith("progress: round 40 of 40 (100%), done in ")
