"""Data for the example DAGs and flows: generated Parquet on the embedded defaults, and a
held-out score for the evaluate step. (Not a DAG file: listed in .airflowignore.)"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from shardtrain.demo import NUM_FEATURES, generate
from shardtrain.home import shardtrain_home

FEATURES = [f"F{i}" for i in range(NUM_FEATURES)]
LABEL = "LABEL"


def prepare(rows: int) -> dict[str, str]:
    """Generate (once) a training set and a holdout under $SHARDTRAIN_HOME/examples."""
    root = shardtrain_home() / "examples" / f"regression-{rows}"
    if not (root / "train").exists():
        generate(root / "train", rows, seed=0)
        generate(root / "holdout", max(rows // 10, 1000), seed=1)
    return {"train": str(root / "train"), "holdout": str(root / "holdout")}


def holdout(path: str) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(path)
    x = np.column_stack([table.column(c).to_numpy() for c in FEATURES])
    return x, table.column(LABEL).to_numpy()


def rmse(predictions, labels) -> float:
    return float(np.sqrt(np.mean((np.asarray(predictions).reshape(-1) - labels) ** 2)))
