"""Training curves: a fit's per-round metrics drawn as a PNG published beside its model and
listed in its manifest; the plot's data (panels, the early-stopping mark) checked directly."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shardtrain.model.curves import (
    CURVES_FILE,
    PANEL_HEIGHT_PX,
    WIDTH_PX,
    TrainingHistory,
    curve_plot,
    curves_uri,
)
from shardtrain.model.manifest import read_manifest
from shardtrain.stage import open_stage
from tests.unit.core.test_curves import png_size

FEATURES = [f"F{i}" for i in range(6)]


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(FEATURES))).astype(np.float32)
    out = pd.DataFrame(x, columns=FEATURES)
    out["Y"] = 2 * x[:, 0] - x[:, 1] + rng.normal(0, 1.0, n)  # noisy: eval stops improving
    return out


@pytest.fixture(scope="module")
def _ray(ray_cluster):
    from shardtrain.runtime import worker_group

    yield
    worker_group.shutdown_workers()


@pytest.mark.parametrize("framework", ["xgboost", "lightgbm"])
def test_a_fit_publishes_its_curves_with_the_early_stopping_mark(_ray, tmp_path, framework):
    from shardtrain import load_model

    if framework == "xgboost":
        from shardtrain.modeling.distributors.xgboost import XGBEstimator as Estimator
        from shardtrain.modeling.distributors.xgboost import XGBScalingConfig as Scaling

        params = {"eta": 0.8, "max_depth": 6, "eval_metric": ["mae", "rmse"]}
    else:
        from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator as Estimator
        from shardtrain.modeling.distributors.lightgbm import LightGBMScalingConfig as Scaling

        params = {"learning_rate": 0.8, "num_leaves": 63, "metric": ["l2", "l1"]}
    estimator = Estimator(
        n_estimators=200,
        params={**params, "early_stopping_rounds": 5},
        scaling_config=Scaling(num_workers=2, num_cpu_per_worker=1),
    )
    estimator.fit(
        frame(2000, 1),
        FEATURES,
        "Y",
        eval_set=frame(1000, 2),
        artifact_stage_location=str(tmp_path),
    )
    artifact = estimator.get_artifact()
    results = estimator.get_eval_results()
    last = len(next(iter(results["eval"].values())))
    assert last < 200  # early stopping ended it

    uri = curves_uri(artifact)
    manifest = read_manifest(open_stage(artifact.uri))
    assert manifest["curves"] == uri == f"{artifact.uri}/{manifest['attempt']}/{CURVES_FILE}"
    assert sorted(e["path"] for e in manifest["files"]) == [artifact.model_file, CURVES_FILE]
    metrics = list(dict.fromkeys(m for ms in results.values() for m in ms))
    assert len(metrics) == 2
    assert png_size(Path(uri)) == (WIDTH_PX, PANEL_HEIGHT_PX * len(metrics))

    # the plot's data: the recorded history, marked at the round early stopping kept
    plot = curve_plot(TrainingHistory(results, rounds=200, early_stopping_rounds=5))
    assert plot.best_round == last - 5
    assert {(p.metric, c.data_set) for p in plot.panels for c in p.curves} == {
        (m, s) for s in ("train", "eval") for m in metrics
    }
    watched = results["eval"][metrics[-1] if framework == "xgboost" else metrics[0]]
    assert watched[plot.best_round - 1] == min(watched[:last])
    if framework == "xgboost":  # the framework's own record of the round it kept
        assert load_model(artifact).best_iteration + 1 == plot.best_round


def test_a_fit_with_no_per_round_metrics_publishes_no_image(_ray, tmp_path, caplog):
    from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig

    caplog.set_level(logging.INFO, logger="shardtrain")
    estimator = XGBEstimator(
        n_estimators=8, scaling_config=XGBScalingConfig(num_workers=1, num_cpu_per_worker=1)
    )
    estimator.fit(frame(500, 3), FEATURES, "Y", artifact_stage_location=str(tmp_path))
    assert estimator.get_eval_results() == {}  # no eval_set: no metrics per round
    artifact = estimator.get_artifact()
    assert artifact.curves is None and [f["path"] for f in artifact.files] == ["model.ubj"]
    assert "training curves:" not in caplog.text
    assert "progress: round 8 of 8 (100%), done in" in caplog.text
