"""Unknown training parameters are named once on the driver, with the closest known name
(XGBoost and LightGBM only warn inside the workers, in logs nobody reads)."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pandas as pd

from tests.unit.core.test_unknown_params import warnings_of


def test_the_module_imports_no_framework_and_known_keys_need_none():
    script = (
        "import sys; from shardtrain.modeling.params import unknown_params; "
        "assert unknown_params('xgboost', {'max_depth': 3, 'eta': 1}) == {}; "
        "print(sorted(m for m in ('xgboost', 'lightgbm', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_fit_names_a_typo_once_on_the_driver(ray_cluster, tmp_path, caplog):
    from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig
    from shardtrain.runtime import worker_group

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.standard_normal((300, 2)).astype(np.float32), columns=["A", "B"])
    frame["Y"] = frame["A"] * 2
    caplog.set_level(logging.WARNING, logger="shardtrain")
    try:
        XGBEstimator(
            n_estimators=2,
            params={"maxdepth": 2},
            scaling_config=XGBScalingConfig(num_workers=1, num_cpu_per_worker=1),
        ).fit(frame, ["A", "B"], "Y", artifact_stage_location=str(tmp_path))
    finally:
        worker_group.shutdown_workers()
    named = [m for m in warnings_of(caplog) if "does not know" in m]
    assert named == [
        "xgboost does not know the training parameter 'maxdepth' (did you mean 'max_depth'?): "
        "it trains without it (each worker's log says so too)."
    ]
