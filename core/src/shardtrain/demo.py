"""The main job on the embedded defaults: ``make demo`` (``python -m shardtrain.demo``).

Generates a regression dataset as Parquet under ``$SHARDTRAIN_HOME/demo``, starts a local
Ray, and has two Ray workers each read its own shard straight from the files, reporting
rows, a checksum of the label and read throughput. (The trainer issues turn this into a
real training run that prints the model location.)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shardtrain.data import ShardedDataConnector
from shardtrain.home import shardtrain_home
from shardtrain.runtime.cluster import connect
from shardtrain.runtime.worker_context import WorkerInfo, bind_worker

NUM_FEATURES = 8


def generate(path, rows: int, seed: int = 0) -> None:
    """A linear target with noise, written in several files and row groups."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    files = 4
    for part in range(files):
        n = rows // files + (1 if part < rows % files else 0)
        features = rng.standard_normal((n, NUM_FEATURES), dtype=np.float32)
        label = features @ np.arange(1, NUM_FEATURES + 1, dtype=np.float32)
        label += rng.normal(0, 0.1, n).astype(np.float32)
        columns = {f"F{i}": features[:, i] for i in range(NUM_FEATURES)}
        columns["LABEL"] = label
        pq.write_table(pa.table(columns), path / f"part-{part}.parquet", row_group_size=50_000)


def read_shard(connector: ShardedDataConnector, rank: int, world_size: int) -> dict:
    with bind_worker(WorkerInfo(rank=rank, world_size=world_size)):
        shard = connector.get_shard()
        start = time.perf_counter()
        rows, total = 0, 0.0
        for batch in shard.iter_batches(batch_size=8192):
            rows += batch.num_rows
            total += float(np.sum(batch.column("LABEL").to_numpy()))
        seconds = time.perf_counter() - start
    return {"rank": rank, "rows": rows, "label_sum": total, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    import ray

    data = shardtrain_home() / "demo" / f"regression-{args.rows}"
    if not data.exists():
        print(f"generating {args.rows:,} rows x {NUM_FEATURES} features in {data}")
        generate(data, args.rows)
    connector = ShardedDataConnector.from_parquet(str(data))
    print(f"data: {connector.describe()}")
    connect()
    remote = ray.remote(num_cpus=1)(read_shard)
    results = ray.get([remote.remote(connector, r, args.workers) for r in range(args.workers)])
    for result in results:
        rate = result["rows"] / max(result["seconds"], 1e-9)
        print(
            f"rank {result['rank']}: {result['rows']:,} rows read from its own shard "
            f"in {result['seconds']:.2f} s ({rate / 1e6:.1f} M rows/s)"
        )
    assert sum(r["rows"] for r in results) == connector.num_rows
    print(f"all {connector.num_rows:,} rows read exactly once across {args.workers} Ray workers")


if __name__ == "__main__":
    main()
