"""Sharding: coverage, disjointness, determinism, equal lengths, balance by rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shardtrain import ShardedDataConnector
from shardtrain.runtime.worker_context import WorkerInfo, bind_worker
from tests.unit.core.test_sharding import ids_of


def test_get_shard_inside_ray_workers(ray_cluster, tmp_path):
    """Each Ray actor, bound to its rank, reads its own shard straight from Parquet."""
    ray = ray_cluster
    pq.write_table(pa.table({"ID": np.arange(1000)}), tmp_path / "d.parquet", row_group_size=64)
    connector = ShardedDataConnector.from_parquet(str(tmp_path / "d.parquet"))

    @ray.remote(num_cpus=0)
    class Worker:
        def read(self, connector, rank, world_size):
            with bind_worker(WorkerInfo(rank=rank, world_size=world_size)):
                return ids_of(connector.get_shard())

    workers = [Worker.remote() for _ in range(3)]
    results = ray.get([w.read.remote(connector, r, 3) for r, w in enumerate(workers)])
    assert [len(r) for r in results] == [333, 333, 334]
    assert sorted(i for r in results for i in r) == list(range(1000))
