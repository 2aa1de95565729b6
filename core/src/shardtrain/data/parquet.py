"""Parquet files as a source: a file, a folder or a glob; local or any fsspec URL."""

from __future__ import annotations

import os
import pickle
import re
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any

import pyarrow as pa

from shardtrain.data.source import Source, slice_batches
from shardtrain.errors import DataSourceError, SchemaError, ShardtrainError, redact_url, scrub

#: Rows per decoded batch when the caller asks for batches as stored (pyarrow's own default).
DEFAULT_READ_ROWS = 65_536
#: The smallest batch decoded; smaller batch sizes are cut from a multiple of themselves.
MIN_READ_ROWS = 8_192
#: Decoded bytes the reader may keep ready ahead of its consumer. Threads decode batches
#: while the consumer works on earlier ones and stop when this much waits: what a read holds
#: is this, plus per decoding thread (``DECODE_THREADS``) the chunk being decoded and the raw
#: bytes of its row group (pre-buffered: one row group a thread), plus what the consumer
#: keeps, whatever the size of the data. (Arrow's dataset scanner, used before, held 50-75%
#: of a file decoded ahead of a slow consumer, whatever its batch and fragment read-ahead
#: said: 68, 140-210 and 270 MiB of 1M, 4M and 8M rows x 17 float32, issue 18.)
READAHEAD_BYTES = 16 * 2**20
#: Decoded bytes per Parquet read call (a multiple of the batch size, cut into batches without
#: a copy; never more than a row group): decoding 8,192 rows at a time costs ~20% more CPU
#: than 65,536. A batch keeps its whole chunk alive: a consumer holding k batches holds at
#: most k chunks.
DECODE_BYTES = 8 * 2**20
#: Row groups decoded at once, each on its own thread with its own file handle, handed to the
#: consumer in order. One at a time, reading was 0.80-0.93x Arrow's dataset scan (which
#: decodes whole row groups, unbounded); two at a time 0.99-1.07x, and each thread holds one
#: chunk and one row group's raw bytes (its decoding state: ~30 MiB for 8 MiB row groups).
DECODE_THREADS = 2

#: Set by ``decode_threads``; None: ``DECODE_THREADS``.
_decode_threads: ContextVar[int | None] = ContextVar(
    "shardtrain_parquet_decode_threads", default=None
)


@contextmanager
def decode_threads(threads: int) -> Iterator[None]:
    """Parquet reads started inside decode ``threads`` row groups at a time instead of
    ``DECODE_THREADS``. GBDT ranks read with one: their matrix build consumes more slowly than
    one thread decodes, and a build under a memory budget counts the reader's window as a
    fixed cost (an external-memory fit of 1.2M x 256 at a 147 MiB budget grew 171 MiB with
    two threads, 139 MiB with one)."""
    token = _decode_threads.set(threads)
    try:
        yield
    finally:
        _decode_threads.reset(token)


def _redact_url(url: str) -> str:
    return redact_url(url)


class ParquetSource(Source):
    """Parquet files read with pyarrow; row groups are the units (footers read, not data).

    Every batch is freshly decoded, so consumers may hand its buffers out without a copy.

    Args:
        path: a file, a folder, or a glob; a local path or an fsspec URL (``s3://``, ...).
        filesystem: an fsspec or pyarrow filesystem to read ``path`` with (optional).
        storage_options: fsspec options (endpoint, credentials) when ``path`` is a URL.
    """

    owns_batches = True

    def __init__(
        self,
        path: str,
        filesystem: Any = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self._path = str(path)
        try:
            self._open(filesystem, storage_options)
        except ShardtrainError as exc:
            if scrub(exc.message, self._path) == exc.message:
                raise
            details = {
                k: scrub(v, self._path) if isinstance(v, str) else v for k, v in exc.details.items()
            }
            raise type(exc)(scrub(exc.message, self._path), **details) from None
        except Exception as exc:  # the filesystem's own errors (botocore, auth, network)
            raise DataSourceError(
                f"cannot read Parquet data at {_redact_url(self._path)!r}: {type(exc).__name__}:"
                f" {scrub(exc, self._path)}. Check the path and the credentials "
                "(storage_options, or the environment).",
                path=_redact_url(self._path),
            ) from None
        super().__init__()

    def _open(self, filesystem: Any, storage_options: dict[str, Any] | None) -> None:
        import pyarrow.parquet as pq

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
        return self._read_sized(start, stop, columns, None)

    def _read_sized(self, start, stop, columns, batch_rows):
        """The range row group by row group, decoded at the hinted size on read-ahead threads
        that stay at most ``READAHEAD_BYTES`` ahead of the consumer."""
        import pyarrow.parquet as pq

        units = [
            (*self._unit_location[unit], lo, hi) for unit, lo, hi in self._units_in(start, stop)
        ]
        if not units:
            return iter(())
        batch_rows = read_rows(batch_rows)
        fields = [self._schema.field(c) for c in columns] if columns else list(self._schema)
        chunk_rows = batch_rows * max(1, DECODE_BYTES // (batch_rows * _row_bytes(fields)))
        fs = self._fs
        footers: dict[int, Any] = {}  # each file's parsed once per read
        # Each thread keeps its file open across row groups: a reader made per row group
        # cost ~0.7 ms (reading 16 of 256 columns: 30% slower).
        open_file = threading.local()

        def reader_for(file_index: int):
            cached = getattr(open_file, "current", None)
            if cached is not None and cached[0] == file_index:
                return cached[2]
            close_file()
            handle = fs.open_input_file(self._files[file_index])
            reader = pq.ParquetFile(handle, pre_buffer=True, metadata=footers.get(file_index))
            footers[file_index] = reader.metadata
            open_file.current = (file_index, handle, reader)
            return reader

        def close_file() -> None:
            cached = getattr(open_file, "current", None)
            open_file.current = None
            if cached is not None:
                cached[1].close()

        def decode(unit) -> Generator[pa.RecordBatch, None, None]:
            """One row group's rows ``lo:hi``, pre-buffered on its own (a whole-file
            pre-buffer would hold all of it) and decoded in chunks of about ``DECODE_BYTES``,
            cut into batches of ``batch_rows``: every batch owns its buffers."""
            file_index, group, lo, hi = unit
            chunks = reader_for(file_index).iter_batches(
                batch_size=chunk_rows, row_groups=[group], columns=columns, use_threads=True
            )
            # Skip into the first row group, stop inside the last.
            for chunk in slice_batches(chunks, lo, hi - lo):
                for offset in range(0, chunk.num_rows, batch_rows):
                    yield chunk.slice(offset, batch_rows)

        return _read_ahead(
            [partial(decode, unit) for unit in units],
            threads=_decode_threads.get(),
            thread_done=close_file,
        )


def _row_bytes(fields: list[pa.Field]) -> int:
    """Decoded bytes per row, about: fixed widths as they are, 32 for anything else."""
    total = 0
    for field in fields:
        try:
            total += max(1, field.type.bit_width // 8)
        except ValueError:  # strings, lists: no fixed width
            total += 32
    return max(1, total)


def read_rows(batch_rows: int | None) -> int:
    """Rows per decoded batch: the caller's batch size, or a multiple of it for small
    ones (decoding tiny batches is slow; slicing the result into them is free)."""
    if batch_rows is None:
        return DEFAULT_READ_ROWS
    return batch_rows * -(-MIN_READ_ROWS // batch_rows)


def _read_ahead(
    parts: Sequence[Callable[[], Generator[pa.RecordBatch, None, None]]],
    budget: int | None = None,
    threads: int | None = None,
    thread_done: Callable[[], None] | None = None,
) -> Iterator[pa.RecordBatch]:
    """The batches of every ``part()`` in order, made on up to ``threads`` threads
    (``DECODE_THREADS``), each making one part at a time, while the consumer works.

    A thread stops while ``budget`` bytes (``READAHEAD_BYTES``) of batches wait, except for the
    part the consumer is at when none of its batches is ready (so a later part never starves
    it). An error reaches the consumer after the batches before it; no part after it starts.
    All threads end when the consumer stops, each calling ``thread_done()`` as it ends."""
    budget = READAHEAD_BYTES if budget is None else budget
    threads = max(1, min(len(parts), DECODE_THREADS if threads is None else threads))
    ready: list[deque[tuple[pa.RecordBatch, int]]] = [deque() for _ in parts]
    done = [False] * len(parts)
    errors: list[BaseException | None] = [None] * len(parts)
    state = {"held": 0, "head": 0, "next": 0, "closed": False, "failed": False}
    cond = threading.Condition()

    def may_add(index: int) -> bool:
        return state["held"] < budget or (index == state["head"] and not ready[index])

    def make(index: int) -> None:
        batches = parts[index]()
        try:
            for batch in batches:
                size = batch.nbytes
                with cond:
                    while not may_add(index) and not state["closed"]:
                        cond.wait()
                    if state["closed"]:
                        return
                    ready[index].append((batch, size))
                    state["held"] += size
                    cond.notify_all()
                del batch  # the consumer's alone once handed over
        finally:
            batches.close()  # its Arrow reader, when the consumer stopped early

    def run() -> None:
        try:
            while True:
                with cond:
                    if state["closed"] or state["failed"] or state["next"] >= len(parts):
                        return
                    index = state["next"]
                    state["next"] += 1
                try:
                    make(index)
                except BaseException as exc:  # handed to the consumer, raised there
                    with cond:
                        errors[index], state["failed"] = exc, True
                finally:
                    with cond:
                        done[index] = True
                        cond.notify_all()
        finally:
            if thread_done is not None:
                thread_done()

    workers = [
        threading.Thread(target=run, name="shardtrain-parquet-read-ahead", daemon=True)
        for _ in range(threads)
    ]

    def consume() -> Iterator[pa.RecordBatch]:
        for worker in workers:
            worker.start()
        try:
            for index in range(len(parts)):
                while True:
                    with cond:
                        if state["head"] != index:
                            state["head"] = index
                            cond.notify_all()  # its thread may add past the budget now
                        while not ready[index] and not done[index]:
                            cond.wait()
                        if not ready[index]:
                            error = errors[index]
                            if error is not None:
                                raise error
                            break
                        batch, size = ready[index].popleft()
                        state["held"] -= size
                        cond.notify_all()
                    yield batch
                    del batch  # not kept while waiting for the next
        finally:
            with cond:
                state["closed"] = True
                for queue in ready:
                    queue.clear()
                cond.notify_all()
            # Their files are closed before the read ends: a thread still closing one while
            # the interpreter exits aborts the process. Each stops within a chunk's decoding.
            for worker in workers:
                if worker.is_alive():
                    worker.join()

    return consume()


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
