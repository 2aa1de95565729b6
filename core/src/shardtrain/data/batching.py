"""Batch streams: exact-size rebatching and a bounded shuffle buffer.

Both hold at most one batch (rebatching) or one buffer (shuffling) of rows, so iterating a
dataset of any size stays within a fixed memory budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

from shardtrain.config import check_int

#: Rows mixed together by a shuffle (beyond the reordering of whole units).
DEFAULT_SHUFFLE_BUFFER_ROWS = 65536


def rebatch(
    batches: Iterable[pa.RecordBatch], batch_size: int, drop_last: bool
) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``batch_size`` rows; the last may be shorter unless dropped.

    Slices of a larger input batch are zero-copy; only batches that straddle input batches
    are concatenated.
    """
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in batches:
        if not pending and batch.num_rows == batch_size:  # already exact: pass it through
            yield batch
            continue
        while batch.num_rows:
            if not pending and batch.num_rows >= batch_size:
                yield batch.slice(0, batch_size)
                batch = batch.slice(batch_size)
                continue
            head = batch.slice(0, batch_size - pending_rows)
            pending.append(head)
            pending_rows += head.num_rows
            batch = batch.slice(head.num_rows)
            if pending_rows == batch_size:
                yield pa.concat_batches(pending)
                pending, pending_rows = [], 0
    if pending and not drop_last:
        yield pa.concat_batches(pending)


def shuffle_buffered(
    batches: Iterable[pa.RecordBatch], buffer_rows: int, rng: np.random.Generator
) -> Iterator[pa.RecordBatch]:
    """Fill a buffer of ``buffer_rows`` rows, permute it, emit it; repeat."""
    buffer: list[pa.RecordBatch] = []
    buffered = 0

    def flush() -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches(buffer)
        yield from table.take(rng.permutation(table.num_rows)).to_batches()

    for batch in batches:
        buffer.append(batch)
        buffered += batch.num_rows
        if buffered >= buffer_rows:
            yield from flush()
            buffer, buffered = [], 0
    if buffer:
        yield from flush()


def check_batch_size(batch_size: int | None) -> None:
    """None (batches as stored) or a positive integer."""
    if batch_size is not None:
        check_int(batch_size, "batch_size", also="None", batch_size=batch_size)
