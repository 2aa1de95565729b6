"""Sources: where rows come from, as Arrow record batches, split without being read.

A source is an ordered sequence of *units* (Parquet row groups, Ray blocks, Snowflake result
batches, slices of an in-memory table) whose row counts are known up front, seen through a
window ``[start, stop)`` of global row numbers. ``slice`` narrows the window without reading
anything, which is how shards are planned on the driver: each worker receives a small,
picklable source for its own rows and reads them itself.

Every source pickles; none pickles credentials into anything it *describes* (``describe()``
feeds the model artifact), and a Snowpark session is never pickled at all.
"""

from __future__ import annotations

import bisect
import os
import pickle
import re
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from shardtrain.errors import DataSourceError, SchemaError, missing_columns_error

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
            raise ValueError(f"slice [{start}, {stop}) outside 0..{self.num_rows}")
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
    def iter_batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The window's rows in order, as record batches of whatever size the storage has."""
        columns = self.check_columns(columns)
        start, stop = self._window
        for batch in self._read_range(start, stop, columns):
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


def _slice_batches(
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


# -- Parquet: a file, a folder, a glob; local or any fsspec URL ---------------------------

_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@]*@")


def _redact_url(url: str) -> str:
    return _URL_CREDENTIALS.sub("", url)


class ParquetSource(Source):
    """Parquet files read with pyarrow; row groups are the units (footers read, not data).

    Args:
        path: a file, a folder, or a glob; a local path or an fsspec URL (``s3://``, ...).
        filesystem: an fsspec or pyarrow filesystem to read ``path`` with (optional).
        storage_options: fsspec options (endpoint, credentials) when ``path`` is a URL.
    """

    def __init__(
        self,
        path: str,
        filesystem: Any = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        import pyarrow.parquet as pq

        self._path = str(path)
        self._fs_spec = _resolve_filesystem(self._path, filesystem, storage_options)
        self._fs_pid = os.getpid()
        self._files = _list_parquet_files(self._fs, self._path)
        self._file_rowgroups: list[list[int]] = []
        schema = None
        for file in self._files:
            try:
                with self._fs.open_input_file(file) as handle:
                    meta = pq.ParquetFile(handle).metadata
                    file_schema = pq.ParquetFile(handle).schema_arrow
            except (OSError, pa.ArrowInvalid) as exc:
                raise DataSourceError(
                    f"cannot read Parquet footer of {file!r}: {exc}. "
                    "Check that the file is Parquet and readable.",
                    path=file,
                ) from exc
            if schema is None:
                schema = file_schema
            elif not file_schema.equals(schema):
                raise SchemaError(
                    f"Parquet file {file!r} has schema {file_schema} but the first file has "
                    f"{schema}; every file of one dataset must share its columns and types.",
                    column=None,
                    available=schema.names,
                )
            self._file_rowgroups.append(
                [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            )
        self._schema = schema
        self._unit_rows = [n for groups in self._file_rowgroups for n in groups]
        # unit index -> (file index, row group index)
        self._unit_location = [
            (f, g) for f, groups in enumerate(self._file_rowgroups) for g in range(len(groups))
        ]
        super().__init__()

    @property
    def _fs(self):
        """The pyarrow filesystem, rebuilt after a fork (s3fs and others are not fork-safe)."""
        if self._fs_pid != os.getpid():
            self._fs_spec = pickle.loads(pickle.dumps(self._fs_spec))
            self._fs_pid = os.getpid()
        return self._fs_spec

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "parquet",
            "path": _redact_url(self._path),
            "files": len(self._files),
            "num_rows": self.num_rows,
        }

    def _read_range(self, start, stop, columns):
        import pyarrow.parquet as pq

        by_file: dict[int, list[tuple[int, int, int]]] = {}
        for unit, lo, hi in self._units_in(start, stop):
            file_index, group = self._unit_location[unit]
            by_file.setdefault(file_index, []).append((group, lo, hi))
        for file_index, groups in by_file.items():
            with self._fs.open_input_file(self._files[file_index]) as handle:
                reader = pq.ParquetFile(handle, pre_buffer=True)
                # One row group per read: pre-buffering a whole file would hold all of it.
                for group, lo, hi in groups:
                    batches = reader.iter_batches(
                        row_groups=[group], columns=columns, use_threads=True
                    )
                    yield from _slice_batches(batches, lo, hi - lo)


def _resolve_filesystem(path: str, filesystem: Any, storage_options: dict[str, Any] | None):
    """A pyarrow filesystem for the path: native for local paths, fsspec-wrapped otherwise."""
    from pyarrow import fs as pafs

    if filesystem is not None:
        if isinstance(filesystem, pafs.FileSystem):
            return filesystem
        return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))
    if "://" not in path or path.startswith("file://"):
        return pafs.LocalFileSystem()
    import fsspec

    try:
        fs, _ = fsspec.core.url_to_fs(path, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise DataSourceError(
            f"no filesystem for {_redact_url(path)!r}: {exc}. Install the fsspec "
            "implementation for its scheme (s3fs for s3://, gcsfs for gs://, adlfs for abfs://).",
            path=_redact_url(path),
        ) from exc
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _strip_scheme(path: str) -> str:
    if path.startswith("file://"):
        return path[len("file://") :]
    return path.split("://", 1)[1] if "://" in path else path


def _list_parquet_files(fs, path: str) -> list[str]:
    from pyarrow import fs as pafs

    target = _strip_scheme(path)
    try:
        info = fs.get_file_info(target)
    except OSError as exc:
        raise DataSourceError(
            f"cannot reach {_redact_url(path)!r}: {exc}", path=_redact_url(path)
        ) from exc
    if info.type == pafs.FileType.File:
        files = [target]
    elif info.type == pafs.FileType.Directory:
        selector = pafs.FileSelector(target, recursive=True)
        files = [
            i.path
            for i in fs.get_file_info(selector)
            if i.type == pafs.FileType.File and not _is_hidden(i.path, target)
        ]
    elif any(ch in target for ch in "*?["):
        files = _glob(fs, target)
    else:
        raise DataSourceError(
            f"Parquet path {_redact_url(path)!r} does not exist; give a Parquet file, a "
            "folder of Parquet files, or a glob such as 'data/*.parquet'.",
            path=_redact_url(path),
        )
    files = sorted(files)
    if not files:
        raise DataSourceError(
            f"no Parquet files found at {_redact_url(path)!r}.", path=_redact_url(path)
        )
    return files


def _is_hidden(path: str, root: str) -> bool:
    relative = path[len(root) :].lstrip("/")
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _glob(fs, pattern: str) -> list[str]:
    import fnmatch

    from pyarrow import fs as pafs

    root = re.split(r"[*?\[]", pattern, maxsplit=1)[0].rsplit("/", 1)[0] or "/"
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return [
        i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, pattern)
    ]


# -- Ray Dataset: its Arrow blocks in the object store --------------------------------------


class RayDatasetSource(Source):
    """A Ray Dataset, executed once into Arrow blocks; any worker fetches the blocks it owns."""

    fork_safe = False

    def __init__(self, dataset: Any) -> None:
        import ray

        self._refs = dataset.to_arrow_refs()
        self._schema = _ray_block_schema(dataset, self._refs)
        self._unit_rows = ray.get([_ray_num_rows(ref) for ref in self._refs])
        super().__init__()

    def describe(self) -> dict[str, Any]:
        return {"kind": "ray_dataset", "blocks": len(self._refs), "num_rows": self.num_rows}

    def _read_range(self, start, stop, columns):
        import ray

        for unit, lo, hi in self._units_in(start, stop):
            table = ray.get(self._refs[unit])
            if columns is not None:
                table = table.select(columns)
            yield from table.slice(lo, hi - lo).to_batches()


def _ray_num_rows(ref):
    import ray

    @ray.remote(num_cpus=0)
    def count(table: pa.Table) -> int:
        return table.num_rows

    return count.remote(ref)


def _ray_block_schema(dataset, refs) -> pa.Schema:
    import ray

    schema = dataset.schema()
    base = getattr(schema, "base_schema", None)
    if isinstance(base, pa.Schema):
        return base
    if not refs:
        raise DataSourceError("the Ray Dataset has no blocks and no Arrow schema.")
    return ray.get(refs[0]).schema


# -- Snowflake: a live query's result batches -----------------------------------------------


class ResultBatchSource(Source):
    """A Snowflake query's result batches (``cursor.get_result_batches()``).

    Each batch pickles as a download link, so whichever worker owns it fetches it directly;
    the driver only ran the query.
    """

    def __init__(self, batches: Sequence[Any], schema: pa.Schema, description: dict) -> None:
        self._batches = list(batches)
        self._schema = schema
        self._description = description
        self._unit_rows = [int(b.rowcount) for b in self._batches]
        super().__init__()

    def describe(self) -> dict[str, Any]:
        return dict(self._description, num_rows=self.num_rows)

    def _read_range(self, start, stop, columns):
        for unit, lo, hi in self._units_in(start, stop):
            table = self._batches[unit].to_arrow()
            if columns is not None:
                table = table.select(columns)
            yield from table.slice(lo, hi - lo).to_batches()


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
        for unit, lo, hi in self._units_in(start, stop):
            yield from self._sources[unit].slice(lo, hi).iter_batches(columns)


# -- dispatch ---------------------------------------------------------------------------------


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
        from shardtrain.data.snowpark import snowpark_source

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
