"""Data loading cases: every row of the training Parquet file, every column touched, batch 8192.

- ``pyarrow.dataset`` scan to numpy: the practical limit for reading this file in Python.
- ``DataConnector.iter_batches`` (Arrow record batches) and ``to_torch_dataset`` (dicts of
  tensors), read in the driver.
- Ray Data ``read_parquet(...).iter_torch_batches``: the dataset path Ray Train feeds from.

Each case checks it saw every row; the report turns the time into rows per second.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

BATCH = 8192


def _touch(batch: pa.RecordBatch) -> int:
    for column in batch.columns:
        column.to_numpy()
    return batch.num_rows


def _check(ctx, rows: int) -> None:
    expected = pq.ParquetFile(ctx.train).metadata.num_rows
    if rows != expected:
        raise AssertionError(f"read {rows} rows, the file has {expected}")


def pyarrow_scan(ctx) -> None:
    _check(ctx, sum(_touch(b) for b in ds.dataset(str(ctx.train)).to_batches(batch_size=BATCH)))


def connector_batches(ctx) -> None:
    from shardtrain import DataConnector

    connector = DataConnector.from_parquet(str(ctx.train))
    _check(ctx, sum(_touch(b) for b in connector.iter_batches(batch_size=BATCH)))


def connector_torch(ctx) -> None:
    from shardtrain import DataConnector

    connector = DataConnector.from_parquet(str(ctx.train))
    batches = connector.to_torch_dataset(batch_size=BATCH, drop_last_batch=False)
    _check(ctx, sum(len(batch["y"]) for batch in batches))


def ray_data_torch(ctx) -> None:
    import ray.data

    dataset = ray.data.read_parquet(str(ctx.train))
    _check(ctx, sum(len(batch["y"]) for batch in dataset.iter_torch_batches(batch_size=BATCH)))
