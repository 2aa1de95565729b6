"""Sources: where rows come from, as Arrow record batches, split without being read.

A source is an ordered sequence of *units* (Parquet row groups, Ray blocks, Snowflake result
batches, slices of an in-memory table) whose row counts are known up front, seen through a
window ``[start, stop)`` of global row numbers. ``slice`` narrows the window without reading
anything, which is how shards are planned on the driver: each worker receives a small,
picklable source for its own rows and reads them itself.

This module holds the base class and the sources with no storage of their own (in-memory
Arrow, several sources in a row); Parquet, Ray and Snowflake sources have their own modules.
Every source pickles; none pickles credentials into anything it *describes* (``describe()``
feeds the model artifact), and a Snowpark session is never pickled at all.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from shardtrain.errors import ConfigError, DataSourceError, SchemaError, missing_columns_error

#: Rows per unit of an in-memory table: small enough that shuffling unit order mixes well,
#: large enough that reading unit by unit costs nothing (slices are zero-copy).
IN_MEMORY_UNIT_ROWS = 4096


class Source:
    """Base class: a window over units of known row counts.

    Subclasses set ``_schema`` and ``_unit_rows`` and implement ``_read_range``.
    """

    _schema: pa.Schema
    _unit_rows: list[int]
    #: False where a forked child process cannot read the source (Ray object refs).
    fork_safe: bool = True
    #: True where every batch read owns fresh memory that nothing else refers to (decoded
    #: Parquet), so a consumer may hand its buffers out without copying (torch tensors).
    owns_batches: bool = False

    def __init__(self, window: tuple[int, int] | None = None) -> None:
        self._offsets = [0]
        for n in self._unit_rows:
            self._offsets.append(self._offsets[-1] + n)
        total = self._offsets[-1]
        self._window = (0, total) if window is None else window
        check_unique_columns(self._schema.names)

    # -- what the source is ------------------------------------------------------------
    @property
    def schema(self) -> pa.Schema:
        return self._schema

    @property
    def num_rows(self) -> int:
        start, stop = self._window
        return stop - start

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description of the data (never credentials), for model artifacts."""
        raise NotImplementedError

    # -- planning without reading ------------------------------------------------------
    def slice(self, start: int, stop: int) -> Source:
        """The rows ``[start, stop)`` of this source (relative to its window), unread."""
        if not 0 <= start <= stop <= self.num_rows:
            raise ConfigError(
                f"slice [{start}, {stop}) is outside rows 0..{self.num_rows} of this source.",
                start=start,
                stop=stop,
            )
        base = self._window[0]
        return self._with_window((base + start, base + stop))

    def unit_slices(self) -> list[Source]:
        """This source cut at unit boundaries: the pieces a shuffle may reorder freely."""
        start, stop = self._window
        if start == stop:
            return []
        cuts = [start] + [o for o in self._offsets if start < o < stop] + [stop]
        return [self._with_window((a, b)) for a, b in zip(cuts, cuts[1:], strict=False)]

    def _with_window(self, window: tuple[int, int]) -> Source:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._window = window
        return clone

    # -- reading -----------------------------------------------------------------------
    def iter_batches(
        self, columns: Sequence[str] | None = None, *, batch_rows: int | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The window's rows in order, as record batches of whatever size the storage has.

        ``batch_rows`` is a hint: a source that decodes (Parquet) cuts its batches at that
        size, so exact-size rebatching passes them through instead of slicing or copying.
        """
        columns = self.check_columns(columns)
        start, stop = self._window
        for batch in self._read_sized(start, stop, columns, batch_rows):
            if batch.num_rows:
                yield batch

    def check_columns(self, columns: Sequence[str] | None) -> list[str] | None:
        """Validate a column selection against the schema; None means all columns."""
        if columns is None:
            return None
        columns = list(columns)
        check_unique_columns(columns)
        missing = [c for c in columns if c not in self._schema.names]
        if missing:
            raise missing_columns_error(missing, self._schema.names)
        return columns

    def _units_in(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """(unit index, first row within the unit, end row within the unit) covering the range."""
        if start >= stop:
            return
        first = bisect.bisect_right(self._offsets, start) - 1
        for unit in range(first, len(self._unit_rows)):
            unit_start = self._offsets[unit]
            if unit_start >= stop:
                break
            lo = max(start, unit_start) - unit_start
            hi = min(stop, self._offsets[unit + 1]) - unit_start
            if hi > lo:
                yield unit, lo, hi

    def _read_range(
        self, start: int, stop: int, columns: list[str] | None
    ) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def _read_sized(
        self, start: int, stop: int, columns: list[str] | None, batch_rows: int | None
    ) -> Iterator[pa.RecordBatch]:
        """``_read_range`` with the batch-size hint; sources whose units are already in
        memory ignore it (their slices cost nothing)."""
        return self._read_range(start, stop, columns)


def check_unique_columns(names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SchemaError(
                f"column {name!r} appears more than once in {list(names)}; "
                "rename or drop the duplicate before training.",
                column=name,
                available=list(names),
            )
        seen.add(name)


def slice_batches(
    batches: Iterator[pa.RecordBatch], skip: int, take: int
) -> Iterator[pa.RecordBatch]:
    """Drop the first ``skip`` rows of a stream, then yield the next ``take`` rows."""
    for batch in batches:
        if take <= 0:
            return
        n = batch.num_rows
        if skip >= n:
            skip -= n
            continue
        if not skip and n <= take:  # the whole batch: no slice object to make
            take -= n
            yield batch
            continue
        piece = batch.slice(skip, min(take, n - skip))
        skip = 0
        take -= piece.num_rows
        yield piece


# -- in-memory Arrow (pandas, pyarrow, Snowpark local testing) -----------------------------


def _table_from_ipc(data: bytes, description: dict[str, Any]) -> ArrowTableSource:
    table = pa.ipc.open_stream(data).read_all()
    return ArrowTableSource(table, description)


class ArrowTableSource(Source):
    """An in-memory ``pyarrow.Table``. Pickles only the rows of its window (via Arrow IPC)."""

    def __init__(self, table: pa.Table, description: dict[str, Any] | None = None) -> None:
        self._table = table
        self._schema = table.schema
        self._description = description or {"kind": "arrow"}
        full, rest = divmod(table.num_rows, IN_MEMORY_UNIT_ROWS)
        self._unit_rows = [IN_MEMORY_UNIT_ROWS] * full + ([rest] if rest else [])
        super().__init__()

    def describe(self) -> dict[str, Any]:
        return dict(self._description, num_rows=self.num_rows)

    def _read_range(self, start, stop, columns):
        table = self._table.select(columns) if columns is not None else self._table
        yield from table.slice(start, stop - start).to_batches()

    def __reduce__(self):
        start, stop = self._window
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self._schema) as writer:
            writer.write_table(self._table.slice(start, stop - start))
        return (_table_from_ipc, (sink.getvalue().to_pybytes(), self._description))


# -- several sources, one after another ------------------------------------------------------


class ConcatSource(Source):
    """Several sources with the same schema, read one after another."""

    def __init__(self, sources: Sequence[Source]) -> None:
        if not sources:
            raise DataSourceError("from_sources needs at least one source.")
        self._sources = list(sources)
        self._schema = self._sources[0].schema
        for source in self._sources[1:]:
            if not source.schema.equals(self._schema):
                raise SchemaError(
                    f"sources have different schemas: {self._schema} vs {source.schema}; "
                    "select the same columns with the same types from each.",
                    column=None,
                    available=self._schema.names,
                )
        self._unit_rows = [s.num_rows for s in self._sources]
        self.fork_safe = all(s.fork_safe for s in self._sources)
        self.owns_batches = all(s.owns_batches for s in self._sources)
        super().__init__()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "concat",
            "sources": [s.describe() for s in self._sources],
            "num_rows": self.num_rows,
        }

    def _with_window(self, window: tuple[int, int]) -> Source:
        # Narrow the parts too, so a shard pickles only its own rows.
        parts = [self._sources[u].slice(lo, hi) for u, lo, hi in self._units_in(*window)]
        return ConcatSource(parts or [self._sources[0].slice(0, 0)])

    def unit_slices(self) -> list[Source]:
        pieces: list[Source] = []
        for unit, lo, hi in self._units_in(*self._window):
            pieces.extend(self._sources[unit].slice(lo, hi).unit_slices())
        return pieces

    def _read_range(self, start, stop, columns):
        return self._read_sized(start, stop, columns, None)

    def _read_sized(self, start, stop, columns, batch_rows):
        for unit, lo, hi in self._units_in(start, stop):
            yield from (
                self._sources[unit].slice(lo, hi).iter_batches(columns, batch_rows=batch_rows)
            )


def pandas_source(frame: Any, description: dict[str, Any] | None = None) -> ArrowTableSource:
    """A pandas DataFrame, converted once to Arrow (the index is dropped)."""
    columns = [str(c) for c in frame.columns]
    check_unique_columns(columns)
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaError(
            f"cannot convert the pandas DataFrame to Arrow: {exc}. Give each column a "
            "single type (mixed objects cannot be trained on).",
            column=None,
            available=columns,
        ) from exc
    return ArrowTableSource(table, description or {"kind": "pandas"})
