"""`import shardtrain` works without any of the optional frameworks installed."""

from __future__ import annotations

import subprocess
import sys

BLOCKER = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"xgboost", "lightgbm", "torch", "snowflake", "airflow",
                                  "prefect"}:
            raise ModuleNotFoundError(f"{name} is blocked in this test")

sys.meta_path.insert(0, Block())
"""


def test_core_imports_without_optional_frameworks():
    script = (
        BLOCKER
        + """
import shardtrain
from shardtrain import DataConnector, ModelArtifact, open_stage
import pyarrow as pa
dc = DataConnector.from_arrow(pa.table({"x": [1, 2, 3]}))
assert dc.num_rows == 3
print(sorted(shardtrain.__all__)[:3])
"""
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_importing_the_rank_modules_starts_no_ray():
    """The rank modules ask whether they run in a Ray worker (to import the framework without
    scikit-learn there); in a plain process that question must not start a local Ray."""
    script = """
import ray
import shardtrain.modeling.distributors.xgboost_worker
import shardtrain.modeling.distributors.lightgbm_worker
assert not ray.is_initialized(), "importing a rank module started Ray"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
