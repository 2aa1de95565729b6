"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/system/packaging/test_missing_dependencies.py.]

A missing optional library is a ``MissingDependencyError`` raised on the driver before any
worker starts (before Ray is even reached), naming the package and the extra; it used to be a
raw ``ModuleNotFoundError`` from inside a Ray worker after the cluster had started."""

from __future__ import annotations

import pytest

from shardtrain import MissingDependencyError, ShardtrainError
from shardtrain.model.frameworks import require_module

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


def test_the_error_is_a_shardtrain_error_and_an_import_error():
    with pytest.raises(MissingDependencyError) as info:
        require_module("snowflake.snowpark_not_a_module", "a test")
    assert isinstance(info.value, ShardtrainError) and isinstance(info.value, ImportError)
    require_module("pyarrow", "a test")  # installed: no error
