"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/core/test_data_connector.py.]

DataConnector behaviour beyond the source matrix: the seed's torch loop, memory bounds,
no pandas in the hot path, and every bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from shardtrain import (
    ConfigError,
    DataConnector,
    DataSourceError,
    EmptyDataError,
    SchemaError,
    ShardedDataConnector,
    ShardtrainError,
)


def test_torch_dataset_one_row_at_a_time():
    dc = DataConnector.from_arrow(pa.table({"x": [1.0, 2.0, 3.0], "y": [1, 0, 1]}))
    rows = list(dc.to_torch_dataset())
    assert len(rows) == 3 and rows[1]["x"].shape == () and rows[1]["x"].item() == 2.0
    batched = list(DataLoader(dc.to_torch_dataset(), batch_size=2))
    assert batched[0]["y"].tolist() == [1, 0]


def test_torch_dataset_drop_last_default_and_decimal():
    from decimal import Decimal

    table = pa.table({"d": pa.array([Decimal("1.5")] * 5, pa.decimal128(10, 2))})
    batches = list(DataConnector.from_arrow(table).to_torch_dataset(batch_size=2))
    assert len(batches) == 2  # drop_last_batch=True by default, as the vendor's
    assert batches[0]["d"].dtype == torch.float64 and batches[0]["d"][0].item() == 1.5


def test_torch_shuffle_varies_by_epoch_and_repeats_by_seed():
    dc = DataConnector.from_arrow(pa.table({"x": np.arange(50_000)}))
    ds = dc.to_torch_dataset(batch_size=1000, shuffle=True, seed=5)
    first = torch.cat([b["x"] for b in ds])
    assert torch.equal(first, torch.cat([b["x"] for b in ds]))
    ds.set_epoch(1)
    second = torch.cat([b["x"] for b in ds])
    assert not torch.equal(first, second)
    assert torch.equal(first.sort().values, second.sort().values)


def test_parquet_streaming_is_memory_bounded(tmp_path):
    """Iterating 61 MiB of Parquet in small batches holds a few row groups (1.5 MiB each),
    never the file: before row-group-at-a-time reads, pre-buffering held 82 MiB here. The
    consumer is slower than the reader (1 ms a batch), so the read-ahead fills its budget."""
    import time

    from shardtrain.data import parquet

    n = 2_000_000
    table = pa.table({f"c{i}": np.random.default_rng(i).random(n) for i in range(4)})
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=50_000)
    del table
    dc = DataConnector.from_parquet(str(tmp_path / "big.parquet"))
    baseline = pa.total_allocated_bytes()
    peak = 0
    rows = 0
    for batch in dc.iter_batches(batch_size=4096):
        rows += batch.num_rows
        peak = max(peak, pa.total_allocated_bytes() - baseline)
        time.sleep(0.001)
    assert rows == n
    data_bytes = n * 4 * 8
    row_group = 50_000 * 4 * 8
    # The read-ahead budget, plus per decoding thread about four row groups (its raw bytes,
    # the decompressed pages, the chunk being decoded, and a chunk held past the budget or by
    # the consumer). Measured: 29.5-31.4 MiB with two threads, 22.6 MiB with one (a fast
    # consumer: 14-16 MiB), whatever the file's size; the bound allows eight row groups a
    # thread for timing and the allocator's padding: 40.5 MiB, still well below the file.
    bound = parquet.READAHEAD_BYTES + 8 * parquet.DECODE_THREADS * row_group
    assert peak < bound, f"peak {peak / 2**20:.1f} MiB for {data_bytes / 2**20:.0f} MiB"


def test_missing_column_names_it_and_lists_columns():
    dc = DataConnector.from_arrow(pa.table({"a": [1], "b": [2]}))
    with pytest.raises(SchemaError) as info:
        list(dc.iter_batches(columns=["a", "zz"]))
    assert info.value.column == "zz" and info.value.available == ["a", "b"]
    assert "'zz'" in str(info.value) and "['a', 'b']" in str(info.value)


def test_duplicate_columns_refused():
    frame = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(SchemaError, match="'a' appears more than once"):
        DataConnector.from_pandas(frame)
    dc = DataConnector.from_arrow(pa.table({"a": [1], "b": [2]}))
    with pytest.raises(SchemaError, match="more than once"):
        dc.to_arrow(columns=["a", "a"])


def test_non_numeric_column_refused_for_torch():
    dc = DataConnector.from_arrow(pa.table({"a": [1.0], "s": ["x"]}))
    with pytest.raises(SchemaError, match="'s' has type string") as info:
        dc.to_torch_dataset()
    assert info.value.column == "s"
    assert list(dc.to_torch_dataset(columns=["a"]))[0]["a"].item() == 1.0


def test_unknown_source_and_missing_path(tmp_path):
    with pytest.raises(DataSourceError, match="cannot read data of type builtins.int"):
        DataConnector.from_dataframe(42)
    with pytest.raises(DataSourceError, match="does not exist"):
        DataConnector.from_parquet(str(tmp_path / "nope.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="no Parquet files"):
        DataConnector.from_parquet(str(tmp_path / "empty"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataSourceError, match="cannot read Parquet footer"):
        DataConnector.from_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DataSourceError, match="no filesystem"):
        DataConnector.from_parquet("nosuchscheme://bucket/data.parquet")


def test_mismatched_parquet_files_refused(tmp_path):
    pq.write_table(pa.table({"a": [1]}), tmp_path / "1.parquet")
    pq.write_table(pa.table({"b": [1.0]}), tmp_path / "2.parquet")
    with pytest.raises(SchemaError, match="share its columns"):
        DataConnector.from_parquet(str(tmp_path))


def test_bad_batch_size_and_world_size():
    dc = ShardedDataConnector.from_arrow(pa.table({"a": [1, 2, 3]}))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="batch_size"):
            list(dc.iter_batches(batch_size=bad))
    with pytest.raises(EmptyDataError, match="3 rows cannot fill 4 shards"):
        dc.shards(4)


def test_errors_pickle_with_their_details():
    error = SchemaError("column 'x' missing", column="x", available=["a"])
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is SchemaError and isinstance(clone, ShardtrainError)
    assert clone.column == "x" and clone.available == ["a"] and str(clone) == str(error)
