"""Which source reads a given piece of data: ``as_source`` dispatches on its type.

The source classes live with their storage (``source``: the base, in-memory Arrow and
concatenation; ``parquet``; ``ray_dataset``; ``snowpark``) and are re-exported here, the one
import path for all of them.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from shardtrain.data.parquet import ParquetSource
from shardtrain.data.ray_dataset import RayDatasetSource
from shardtrain.data.snowpark import ResultBatchSource, snowpark_source
from shardtrain.data.source import (
    ArrowTableSource,
    ConcatSource,
    Source,
    check_unique_columns,
    pandas_source,
)
from shardtrain.errors import DataSourceError

__all__ = [
    "ArrowTableSource",
    "ConcatSource",
    "ParquetSource",
    "RayDatasetSource",
    "ResultBatchSource",
    "Source",
    "as_source",
    "check_unique_columns",
    "pandas_source",
]


def as_source(data: Any) -> Source:
    """The source for any supported kind of data (what every ``from_*`` ends up calling)."""
    if isinstance(data, Source):
        return data
    if isinstance(data, pa.Table):
        return ArrowTableSource(data)
    if isinstance(data, pa.RecordBatch):
        return ArrowTableSource(pa.Table.from_batches([data]))
    module = type(data).__module__
    if module.startswith("pandas"):
        return pandas_source(data)
    if module.startswith("snowflake.snowpark"):
        return snowpark_source(data)
    if module.startswith("ray.data"):
        return RayDatasetSource(data)
    if isinstance(data, str) or hasattr(data, "__fspath__"):
        return ParquetSource(str(data))
    raise DataSourceError(
        f"cannot read data of type {type(data).__module__}.{type(data).__name__}; give a "
        "pandas DataFrame, a pyarrow Table, a Parquet path or URL, a Snowpark DataFrame, "
        "a Ray Dataset or a DataConnector.",
        kind=type(data).__name__,
    )
