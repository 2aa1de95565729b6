"""The benchmark's data: synthetic regression tables written as Parquet, and holdout readers.

Every case reads the same files, so every implementation trains on the same rows. The
target is nonlinear (a sine and an interaction) with noise, so models are compared on a
held-out RMSE that moves with quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = 32
ROW_GROUP = 128 * 1024


def feature_names(columns: int = COLUMNS) -> list[str]:
    return [f"f{i}" for i in range(columns)]


def make_parquet(path: Path, rows: int, columns: int = COLUMNS, seed: int = 0) -> Path:
    """Write rows x columns float32 features and a float32 label ``y`` to one Parquet file."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, columns), dtype=np.float32)
    y = x[:, 0] * 2 - x[:, 1] + np.sin(x[:, 2]) + 0.5 * x[:, 3] * x[:, 4]
    y += rng.normal(0, 0.3, rows).astype(np.float32)
    table = pa.table({**{f"f{i}": x[:, i] for i in range(columns)}, "y": y})
    pq.write_table(table, path, row_group_size=ROW_GROUP)
    return path


def read_xy(path: Path, columns: int = COLUMNS) -> tuple[np.ndarray, np.ndarray]:
    """The whole file as a float32 feature matrix and label vector (pyarrow, no pandas)."""
    table = pq.read_table(path)
    x = np.column_stack([table.column(name).to_numpy() for name in feature_names(columns)])
    return x, table.column("y").to_numpy()


def rmse(prediction, y) -> float:
    return float(np.sqrt(np.mean((np.asarray(prediction).reshape(-1) - y) ** 2)))
