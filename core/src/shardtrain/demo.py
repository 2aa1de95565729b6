"""The main job on the embedded defaults: ``make demo`` (``python -m shardtrain.demo``).

Generates a regression dataset as Parquet under ``$SHARDTRAIN_HOME/demo``, starts a local
Ray, trains XGBoost across two Ray workers (each reading its own shard straight from the
files), publishes the model to the local stage, and prints its location and final metrics.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shardtrain.data import ShardedDataConnector
from shardtrain.home import shardtrain_home
from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig
from shardtrain.runtime.cluster import connect

NUM_FEATURES = 8


def generate(path, rows: int, seed: int = 0) -> None:
    """A linear target with noise, written in several files and row groups."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    files = 4
    for part in range(files):
        n = rows // files + (1 if part < rows % files else 0)
        features = rng.standard_normal((n, NUM_FEATURES), dtype=np.float32)
        label: np.ndarray = features @ np.arange(1, NUM_FEATURES + 1, dtype=np.float32)
        label += rng.normal(0, 0.1, n).astype(np.float32)
        columns = {f"F{i}": features[:, i] for i in range(NUM_FEATURES)}
        columns["LABEL"] = label
        pq.write_table(pa.table(columns), path / f"part-{part}.parquet", row_group_size=50_000)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args(argv)

    data = shardtrain_home() / "demo" / f"regression-{args.rows}"
    holdout = shardtrain_home() / "demo" / f"holdout-{args.rows}"
    if not data.exists():
        print(f"generating {args.rows:,} rows x {NUM_FEATURES} features in {data}")
        generate(data, args.rows, seed=0)
        generate(holdout, max(args.rows // 10, 1000), seed=1)
    train = ShardedDataConnector.from_parquet(str(data))
    evals = ShardedDataConnector.from_parquet(str(holdout))
    print(f"data: {train.describe()}")
    connect()
    estimator = XGBEstimator(
        n_estimators=args.rounds,
        params={"max_depth": 6, "eta": 0.3},
        scaling_config=XGBScalingConfig(num_workers=args.workers, num_cpu_per_worker=1),
    )
    start = time.perf_counter()
    estimator.fit(
        train, [f"F{i}" for i in range(NUM_FEATURES)], "LABEL", eval_set=evals, verbose_eval=10
    )
    artifact = estimator.get_artifact()
    print(f"trained on {args.workers} Ray workers in {time.perf_counter() - start:.1f} s")
    print(f"final metrics: {artifact.metrics}")
    print(f"model location: {artifact.uri}")


if __name__ == "__main__":
    main()
