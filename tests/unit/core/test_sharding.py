"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/core/test_sharding.py.]

Sharding: coverage, disjointness, determinism, equal lengths, balance by rows."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardtrain import ConfigError, EmptyDataError, ShardedDataConnector
from shardtrain.data.sharded_data_connector import plan_shards
from shardtrain.data.sharding import shard
from shardtrain.data.sources import ArrowTableSource, ConcatSource
from shardtrain.runtime.worker_context import WorkerInfo, bind_worker


def ids_of(connector) -> list[int]:
    return [i for b in connector.iter_batches(columns=["ID"]) for i in b.column("ID").to_pylist()]


def pieces_connector(piece_sizes: list[int], equal: bool) -> ShardedDataConnector:
    """Units of arbitrary sizes (like uneven row groups), numbered by a global ID column."""
    tables, start = [], 0
    for size in piece_sizes:
        tables.append(ArrowTableSource(pa.table({"ID": np.arange(start, start + size)})))
        start += size
    return ShardedDataConnector(ConcatSource(tables), equal=equal)


@settings(max_examples=60, deadline=None)
@given(
    piece_sizes=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=12),
    world_size=st.integers(min_value=1, max_value=9),
    equal=st.booleans(),
)
def test_shards_cover_disjoint_deterministic(piece_sizes, world_size, equal):
    total = sum(piece_sizes)
    connector = pieces_connector(piece_sizes, equal)
    if total < world_size:
        with pytest.raises(EmptyDataError, match="cannot fill"):
            connector.shards(world_size)
        return
    shards = connector.shards(world_size)
    assert len(shards) == world_size
    seen = [ids_of(s) for s in shards]
    flat = [i for ids in seen for i in ids]
    assert len(flat) == len(set(flat)), "shards overlap"
    sizes = [len(ids) for ids in seen]
    assert sizes == [s.num_rows for s in shards]  # planned counts match what is read
    if equal:
        assert len(set(sizes)) == 1
        assert 0 <= total - len(flat) <= world_size - 1
    else:
        assert sorted(flat) == list(range(total)), "a row is missing"
        assert max(sizes) - min(sizes) <= 1, "not balanced by rows"
    again = [ids_of(s) for s in pieces_connector(piece_sizes, equal).shards(world_size)]
    assert again == seen
    # A shard pickled to a worker reads the same rows there.
    assert [ids_of(pickle.loads(pickle.dumps(s))) for s in shards] == seen


@settings(max_examples=200, deadline=None)
@given(num_rows=st.integers(0, 10_000), world_size=st.integers(1, 64), equal=st.booleans())
def test_plan_shards_properties(num_rows, world_size, equal):
    windows = plan_shards(num_rows, world_size, equal)
    assert len(windows) == world_size
    assert windows[0][0] == 0
    for (a, b), (c, _) in zip(windows, windows[1:], strict=False):
        assert a <= b == c
    if not equal:
        assert windows[-1][1] == num_rows
    else:
        assert num_rows - windows[-1][1] < world_size


def test_parquet_shards_balanced_by_rows_not_files(tmp_path):
    """One big file and four tiny ones: shards still get equal rows."""
    pq.write_table(
        pa.table({"ID": np.arange(0, 9000)}), tmp_path / "a.parquet", row_group_size=2000
    )
    for i in range(4):
        ids = np.arange(9000 + i * 250, 9000 + (i + 1) * 250)
        pq.write_table(pa.table({"ID": ids}), tmp_path / f"b{i}.parquet")
    connector = ShardedDataConnector.from_parquet(str(tmp_path))
    shards = connector.shards(4)
    assert [s.num_rows for s in shards] == [2500] * 4
    assert sorted(i for s in shards for i in ids_of(s)) == list(range(10_000))


def test_equal_shards_drop_fewer_than_world_size_rows():
    connector = ShardedDataConnector.from_arrow(pa.table({"ID": np.arange(103)}), equal=True)
    shards = connector.shards(4)
    assert [s.num_rows for s in shards] == [25] * 4
    assert sum(len(ids_of(s)) for s in shards) == 100


def test_in_memory_shard_pickles_only_its_rows():
    table = pa.table({"ID": np.arange(1_000_000, dtype=np.int64)})
    shard = ShardedDataConnector.from_arrow(table).shards(10)[3]
    size = len(pickle.dumps(shard))
    assert size < 1_000_000 * 8 / 10 * 1.1, size
    assert ids_of(pickle.loads(pickle.dumps(shard)))[0] == 300_000


def test_get_shard_explicit_and_bound_and_outside():
    connector = ShardedDataConnector.from_arrow(pa.table({"ID": np.arange(10)}))
    assert ids_of(connector.get_shard(1, 2)) == [5, 6, 7, 8, 9]
    with bind_worker(WorkerInfo(rank=0, world_size=2)):
        assert ids_of(connector.get_shard()) == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="get_shard"):
        connector.get_shard()
    with pytest.raises(ConfigError, match="outside"):
        connector.get_shard(2, 2)
    with pytest.raises(ConfigError, match="world_size"):
        connector.shards(0)


def test_run_shards_honour_the_connectors_equal_flag():
    """The shards a fit or run hands its ranks follow ShardedDataConnector(equal=...);
    prediction asks for every row whatever the flag."""
    table = pa.table({"ID": np.arange(103)})
    equal = shard(ShardedDataConnector.from_arrow(table, equal=True), 4, "training")
    assert [s.num_rows for s in equal] == [25] * 4
    assert [ids_of(s) for s in equal] == [list(range(i * 25, (i + 1) * 25)) for i in range(4)]
    plain = shard(ShardedDataConnector.from_arrow(table), 4, "training")
    assert sorted(i for s in plain for i in ids_of(s)) == list(range(103))
    every = shard(ShardedDataConnector.from_arrow(table, equal=True), 4, "prediction", equal=False)
    assert sum(s.num_rows for s in every) == 103
    with pytest.raises(EmptyDataError, match="fewer than the 4 workers"):
        shard(ShardedDataConnector.from_arrow(pa.table({"ID": [1, 2, 3]}), equal=True), 4, "x")
