"""Labels checked against the objective on the workers, before any round is trained (a real
local Ray: labels are read only where the shards are)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shardtrain.errors import SchemaError
from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator, LightGBMScalingConfig
from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig
from shardtrain.runtime import worker_group

pytestmark = pytest.mark.ray  # real Ray workers

TWO = {"num_workers": 2, "num_cpu_per_worker": 1}
rng = np.random.default_rng(5)
FRAME = pd.DataFrame(rng.standard_normal((1000, 2)), columns=["A", "B"])


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_cluster):
    worker_group.shutdown_workers()
    yield
    worker_group.shutdown_workers()


def estimator(framework, **params):
    if framework == "xgboost":
        return XGBEstimator(n_estimators=3, params=params, scaling_config=XGBScalingConfig(**TWO))
    return LightGBMEstimator(
        n_estimators=3, params=params, scaling_config=LightGBMScalingConfig(**TWO)
    )


@pytest.mark.parametrize(
    "framework,params,labels,match",
    [
        ("lightgbm", {"objective": "binary"}, np.arange(1000) % 6, r"\[2\.0, 3\.0, 4\.0, 5\.0\]"),
        ("xgboost", {"objective": "binary:logistic"}, np.arange(1000) % 6, r"\[2\.0, 3\.0"),
        ("xgboost", {"objective": "multi:softprob", "num_class": 3}, np.arange(1000) % 5, "3.0"),
        ("lightgbm", {"objective": "regression"}, np.r_[np.zeros(999), np.inf], r"\[inf\]"),
        ("xgboost", {}, np.r_[np.zeros(999), -np.inf], r"\[-inf\]"),
    ],
)
def test_labels_the_objective_cannot_take_are_refused(framework, params, labels, match, tmp_path):
    frame = FRAME.assign(Y=labels.astype(np.float64))
    with pytest.raises(SchemaError, match=match) as info:
        estimator(framework, **params).fit(
            frame, ["A", "B"], "Y", artifact_stage_location=str(tmp_path)
        )
    assert "label column 'Y'" in str(info.value) and "on rank " in str(info.value)
    assert info.value.rank in (0, 1)
    assert not list(tmp_path.glob("model/*"))  # nothing published
