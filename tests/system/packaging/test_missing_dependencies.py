"""A missing optional library is a ``MissingDependencyError`` raised on the driver before any
worker starts (before Ray is even reached), naming the package and the extra; it used to be a
raw ``ModuleNotFoundError`` from inside a Ray worker after the cluster had started."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# In a fresh process: the libraries hidden (sys.modules[name] = None makes them unimportable)
# and RAY_ADDRESS unreachable, so an error raised after connecting would be a ClusterError.
PROBE = r"""
import json, sys
import pandas as pd
for name in ("xgboost", "lightgbm", "torch", "mlflow"):
    sys.modules[name] = None
from shardtrain import LightGBMEstimator, PyTorchDistributor, XGBEstimator
from shardtrain.model.registry import register_model

frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "y": [0.0, 1.0, 0.0, 1.0]})
calls = {
    "xgboost": lambda: XGBEstimator().fit(frame, ["a"], "y"),
    "lightgbm": lambda: LightGBMEstimator().fit(frame, ["a"], "y"),
    "torch": lambda: PyTorchDistributor(lambda: None).run(),
    "mlflow": lambda: register_model("/nowhere", name="m"),
}
out = {}
for name, call in calls.items():
    try:
        call()
        out[name] = None
    except Exception as exc:
        out[name] = [type(exc).__name__, str(exc), getattr(exc, "extra", None)]
print(json.dumps(out))
"""


def test_missing_frameworks_are_named_with_their_extra_before_ray_is_reached():
    env = dict(os.environ, RAY_ADDRESS="127.0.0.1:1")
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    expected_extra = {"xgboost": "xgboost-cpu", "lightgbm": "lightgbm", "torch": "torch",
                      "mlflow": "mlflow"}  # fmt: skip
    for name, extra in expected_extra.items():
        kind, message, got_extra = out[name]
        assert kind == "MissingDependencyError", (name, out[name])
        assert got_extra == extra and f"shardtrain[{extra}]" in message, message
    assert "xgboost (or xgboost-cpu)" in out["xgboost"][1]
