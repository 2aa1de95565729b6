"""DataConnector: one way in for every kind of training data, streamed as Arrow batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from shardtrain.data.batching import (
    DEFAULT_SHUFFLE_BUFFER_ROWS,
    check_batch_size,
    rebatch,
    shuffle_buffered,
)
from shardtrain.data.snowpark import dataframe_from_sql
from shardtrain.data.sources import (
    ConcatSource,
    ParquetSource,
    RayDatasetSource,
    Source,
    as_source,
    pandas_source,
)
from shardtrain.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    import ray.data

    from shardtrain.data.torch import ArrowTorchDataset


class DataConnector:
    """Training data from any source, read as Arrow record batches without a full copy.

    The connector holds a *description* of the data (a source), not the data: it pickles
    small and is read wherever it is iterated.

    Example:
        >>> import pandas as pd
        >>> from shardtrain import DataConnector
        >>> dc = DataConnector.from_pandas(pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0, 1, 0]}))
        >>> [b.num_rows for b in dc.iter_batches(batch_size=2)]
        [2, 1]
    """

    def __init__(self, source: Source) -> None:
        self._source = source

    # -- constructors (the vendor's names) -------------------------------------------------
    @classmethod
    def from_dataframe(cls, df: Any, **kwargs: Any) -> DataConnector:
        """A Snowpark or pandas DataFrame (or a pyarrow Table)."""
        return cls(as_source(df), **kwargs)

    @classmethod
    def from_sql(cls, query: str, session: Any = None, **kwargs: Any) -> DataConnector:
        """The result of a SQL query on a Snowpark session (the active one by default)."""
        return cls.from_dataframe(dataframe_from_sql(query, session), **kwargs)

    @classmethod
    def from_pandas(cls, df: pd.DataFrame, **kwargs: Any) -> DataConnector:
        return cls(pandas_source(df), **kwargs)

    @classmethod
    def from_arrow(cls, table: pa.Table | pa.RecordBatch, **kwargs: Any) -> DataConnector:
        return cls(as_source(table), **kwargs)

    @classmethod
    def from_parquet(
        cls,
        path: str,
        filesystem: Any = None,
        storage_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> DataConnector:
        """A Parquet file, folder or glob; local, or any fsspec URL (s3://, gs://, memory://).

        ``filesystem`` (fsspec or pyarrow) or ``storage_options`` (fsspec options such as an
        endpoint) say how to reach a URL; neither is ever written into a model artifact.
        """
        return cls(ParquetSource(path, filesystem, storage_options), **kwargs)

    @classmethod
    def from_ray_dataset(cls, dataset: Any, **kwargs: Any) -> DataConnector:
        return cls(RayDatasetSource(dataset), **kwargs)

    @classmethod
    def from_sources(cls, session: Any, sources: Sequence[Any], **kwargs: Any) -> DataConnector:
        """Several sources read one after another, as the vendor's ``from_sources``.

        Each item is anything ``from_dataframe`` or ``from_parquet`` takes, or an object with
        a ``sql`` attribute (the vendor's ``DataFrameInfo``), run on ``session``.
        """
        resolved = [
            as_source(dataframe_from_sql(item.sql, session))
            if hasattr(item, "sql")
            else as_source(item)
            for item in sources
        ]
        return cls(ConcatSource(resolved), **kwargs)

    # -- what it holds -------------------------------------------------------------------
    @property
    def schema(self) -> pa.Schema:
        return self._source.schema

    @property
    def columns(self) -> list[str]:
        return list(self._source.schema.names)

    @property
    def num_rows(self) -> int:
        """Row count, known from metadata (Parquet footers, result batch counts) without a scan."""
        return self._source.num_rows

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description of the data (table, query or path; never credentials)."""
        return self._source.describe()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    # -- reading -------------------------------------------------------------------------
    def iter_batches(
        self,
        batch_size: int | None = None,
        *,
        columns: Sequence[str] | None = None,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last_batch: bool = False,
        shuffle_buffer_rows: int = DEFAULT_SHUFFLE_BUFFER_ROWS,
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of exactly ``batch_size`` rows (the last may be shorter unless dropped).

        ``batch_size=None`` yields batches as the storage has them. ``shuffle`` reorders the
        source's units (row groups, blocks) and mixes rows within a buffer of
        ``shuffle_buffer_rows``, so memory stays bounded; ``seed`` makes it repeatable.
        """
        check_batch_size(batch_size)
        columns = self._source.check_columns(columns)
        if shuffle:
            rng = np.random.default_rng(seed)
            pieces = self._source.unit_slices()
            order = rng.permutation(len(pieces))
            stream: Iterator[pa.RecordBatch] = (
                b for i in order for b in pieces[i].iter_batches(columns)
            )
            stream = shuffle_buffered(stream, max(shuffle_buffer_rows, batch_size or 1), rng)
        else:
            stream = self._source.iter_batches(columns, batch_rows=batch_size)
        if batch_size is None:
            yield from stream
        else:
            yield from rebatch(stream, batch_size, drop_last_batch)

    def to_arrow(self, columns: Sequence[str] | None = None) -> pa.Table:
        columns = self._source.check_columns(columns)
        schema = (
            self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
        )
        return pa.Table.from_batches(list(self._source.iter_batches(columns)), schema=schema)

    def to_pandas(self, limit: int | None = None) -> pd.DataFrame:
        """The data as pandas (the first ``limit`` rows when given)."""
        source = self._source if limit is None else self._source.slice(0, min(limit, self.num_rows))
        return DataConnector(source).to_arrow().to_pandas()

    def to_torch_dataset(
        self,
        *,
        batch_size: int | None = None,
        shuffle: bool = False,
        drop_last_batch: bool = True,
        columns: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> ArrowTorchDataset:
        """A torch ``IterableDataset`` yielding one ``dict[str, Tensor]`` per batch.

        Each column is a 1-D tensor of the batch's length (``batch_size=None``: one row at a
        time). With ``DataLoader(num_workers=k)`` each loader worker reads a disjoint part.
        """
        from shardtrain.data.torch import ArrowTorchDataset  # imports torch (optional)

        return ArrowTorchDataset(
            self,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last_batch=drop_last_batch,
            columns=columns,
            seed=seed,
        )

    def to_ray_dataset(self, batch_size: int = 65536) -> ray.data.Dataset:
        """A Ray Dataset of the same rows, streamed through the object store in blocks."""
        import ray

        if isinstance(self._source, RayDatasetSource) and self._source.num_rows == sum(
            self._source._unit_rows
        ):
            return ray.data.from_arrow_refs(list(self._source._refs))
        refs = [
            ray.put(pa.Table.from_batches([batch]))
            for batch in self.iter_batches(batch_size=batch_size)
        ]
        if not refs:
            return ray.data.from_arrow(self.schema.empty_table())
        return ray.data.from_arrow_refs(refs)

    # -- planning (used by ShardedDataConnector and torch loader workers) -----------------
    def _part(self, start: int, stop: int) -> DataConnector:
        return DataConnector(self._source.slice(start, stop))


def as_connector(data: Any, name: str) -> DataConnector:
    """A DataConnector for anything ``fit``, ``predict`` and ``run`` accept."""
    if isinstance(data, DataConnector):
        return data
    if data is None:
        raise ConfigError(
            f"{name} is required: give a DataConnector, a pandas or Arrow table, "
            "a Snowpark DataFrame or a Parquet path."
        )
    if type(data).__name__ == "Series" and hasattr(data, "to_frame"):
        raise ConfigError(
            f"{name} is a pandas Series (one column); training needs the feature and label "
            "columns: pass a DataFrame (series.to_frame() for one column)."
        )
    return DataConnector.from_dataframe(data)
