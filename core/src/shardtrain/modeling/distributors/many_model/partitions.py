"""Planning a run's partitions on the driver, from each kind of source.

Why: every input error (missing column, null or empty partitions, no data) must be raised
before any task starts, and each planned partition must be small to ship to its task: an
Arrow slice put in the object store, a Parquet source filtered in the task (by column, or by
``column=value`` folders from the footers alone), or a Snowpark query's result batches.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from shardtrain.data.data_connector import DataConnector
from shardtrain.data.parquet import ParquetSource
from shardtrain.data.source import ArrowTableSource
from shardtrain.data.sources import as_source
from shardtrain.errors import ConfigError, EmptyDataError, SchemaError, missing_columns_error
from shardtrain.model.artifact import request_id_from

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class Partition:
    """A partition as planned on the driver: small and picklable; its rows are read in the
    task (an Arrow slice put in the object store, or a filtered Parquet/Snowflake source)."""

    partition_id: str
    folder: str
    num_rows: int
    table_ref: Any = None  # ray ObjectRef of an Arrow table
    source: Any = None  # a Source (Parquet filtered in the task, Snowflake result batches)
    parquet_filter: tuple[str, Any] | None = None

    def connector(self) -> DataConnector:
        if self.table_ref is not None:
            import ray

            return DataConnector(ArrowTableSource(ray.get(self.table_ref)))
        if self.parquet_filter is not None:
            return DataConnector(ArrowTableSource(_read_parquet(self.source, *self.parquet_filter)))
        return DataConnector(self.source)


def _folder_name(partition_id: str) -> str:
    """A folder name for a partition id: the id itself when path-safe, else a safe form plus a
    hash (so ids differing only in unsafe characters never share a folder)."""
    return partition_id if _SAFE.fullmatch(partition_id) else request_id_from(partition_id)


def _dataset(source: ParquetSource):
    import pyarrow.dataset as ds

    return ds.dataset(source._files, filesystem=source._fs, format="parquet")


def _hive_dataset(path: str, storage_options: dict[str, Any] | None):
    import pyarrow.dataset as ds

    from shardtrain.data.parquet import _resolve_filesystem, _strip_scheme

    fs = _resolve_filesystem(path, None, storage_options)
    return ds.dataset(_strip_scheme(path), filesystem=fs, format="parquet", partitioning="hive")


def _read_parquet(source: Any, column: str, value: Any) -> pa.Table:
    import pyarrow.dataset as ds

    dataset = _dataset(source) if isinstance(source, ParquetSource) else _hive_dataset(*source)
    return dataset.to_table(filter=ds.field(column) == value)


def _resolve_column(partition_by: str, names: list[str]) -> str:
    if partition_by in names:
        return partition_by
    folded = [n for n in names if n.upper() == partition_by.upper()]  # Snowflake upper-cases
    if len(folded) == 1:
        return folded[0]
    raise missing_columns_error([partition_by], names)


def _value_counts(column: pa.ChunkedArray | pa.Array, name: str) -> list[tuple[Any, int]]:
    nulls = column.null_count
    if nulls:
        raise SchemaError(
            f"{nulls} rows have no value (null) in the partition column {name!r}: fill or drop "
            "them before training (a model per partition needs every row to name one).",
            column=name,
            available=[name],
        )
    counts = pc.value_counts(column)
    pairs = [(v.as_py(), c.as_py()) for v, c in zip(counts.field(0), counts.field(1), strict=True)]
    return sorted(pairs, key=lambda p: str(p[0]))


def _partitions(pairs: list[tuple[Any, int]], make: Callable[[Any, str, str, int], Partition]):
    parts: list[Partition] = []
    folders: dict[str, str] = {}
    for value, count in pairs:
        pid = str(value)
        folder = _folder_name(pid)
        if folder in folders:
            raise ConfigError(
                f"partition values {folders[folder]!r} and {pid!r} read the same as text; "
                "make the partition column's values distinct as strings.",
                partition_id=pid,
            )
        folders[folder] = pid
        if count == 0:
            raise EmptyDataError(
                f"partition {pid!r} has no rows: a model cannot be trained on it. Drop the "
                "empty partition (folder) from the data.",
                partition_id=pid,
            )
        parts.append(make(value, pid, folder, count))
    if not parts:
        raise EmptyDataError("the data has no rows, so there is no partition to train.")
    return parts


def plan_partitions(
    data: Any, partition_by: str, storage_options: dict[str, Any] | None = None
) -> list[Partition]:
    """One ``Partition`` per distinct value of ``partition_by``; errors (missing column,
    nulls, empty partitions, no data) are raised here, before any task starts."""
    import ray

    if not isinstance(partition_by, str) or not partition_by:
        raise ConfigError(f"partition_by must name a column, got {partition_by!r}.")
    if isinstance(data, DataConnector):
        source = data._source
    elif isinstance(data, str | Path) or hasattr(data, "__fspath__"):
        source = _parquet_or_hive(str(data), partition_by, storage_options)
    elif type(data).__module__.startswith("snowflake.snowpark") and not _local_testing(data):
        return _snowpark_partitions(data, partition_by)
    else:
        source = as_source(data)
    if isinstance(source, tuple):  # hive-partitioned Parquet: (path, storage_options)
        dataset = _hive_dataset(*source)
        column = _resolve_column(partition_by, dataset.schema.names)
        pairs = _folder_counts(dataset, column)
        return _partitions(
            pairs,
            lambda v, pid, f, n: Partition(pid, f, n, source=source, parquet_filter=(column, v)),
        )
    column = _resolve_column(partition_by, list(source.schema.names))
    if isinstance(source, ParquetSource):
        values = _dataset(source).to_table(columns=[column]).column(column)
        return _partitions(
            _value_counts(values, column),
            lambda v, pid, f, n: Partition(pid, f, n, source=source, parquet_filter=(column, v)),
        )
    table = DataConnector(source).to_arrow()
    values = table.column(column)
    return _partitions(
        _value_counts(values, column),
        lambda v, pid, f, n: Partition(
            pid, f, n, table_ref=ray.put(table.filter(pc.equal(values, pa.scalar(v, values.type))))
        ),
    )


def _folder_counts(dataset: Any, column: str) -> list[tuple[Any, int]]:
    """Rows per ``column=value`` folder, from Parquet footers only; a folder whose files hold
    no rows is kept (with 0) so that it is refused, not silently skipped."""
    import pyarrow.dataset as ds

    counts: dict[Any, int] = {}
    for fragment in dataset.get_fragments():
        keys = ds.get_partition_keys(fragment.partition_expression)
        if column not in keys:  # the column is inside the files, not a folder name
            return _value_counts(dataset.to_table(columns=[column]).column(column), column)
        counts[keys[column]] = counts.get(keys[column], 0) + fragment.count_rows()
    return sorted(counts.items(), key=lambda p: str(p[0]))


def _parquet_or_hive(path: str, partition_by: str, storage_options: dict[str, Any] | None):
    source = ParquetSource(path, storage_options=storage_options)
    if partition_by in source.schema.names or partition_by.upper() in [
        n.upper() for n in source.schema.names
    ]:
        return source
    return (path, storage_options)  # folders named partition_by=value (hive)


def _local_testing(df: Any) -> bool:
    from shardtrain.data.snowpark import is_local_testing

    return is_local_testing(df.session)


def _snowpark_partitions(df: Any, partition_by: str) -> list[Partition]:
    """A live Snowpark DataFrame: distinct values counted in Snowflake, each partition's
    query run on the driver and its result batches read in the task."""
    from snowflake.snowpark.functions import col

    from shardtrain.data.snowpark import snowpark_source

    column = _resolve_column(partition_by, list(df.columns))
    rows = df.group_by(col(column)).count().collect()
    pairs = sorted(((r[0], r[1]) for r in rows), key=lambda p: str(p[0]))
    if any(v is None for v, _ in pairs):
        raise SchemaError(
            f"rows have no value (null) in the partition column {column!r}: fill or drop them.",
            column=column,
            available=list(df.columns),
        )
    return _partitions(
        pairs,
        lambda v, pid, f, n: Partition(
            pid, f, n, source=snowpark_source(df.filter(col(column) == v))
        ),
    )
