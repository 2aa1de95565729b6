"""A torch IterableDataset over a DataConnector (torch is imported only here).

Arrow columns become tensors batch by batch (no pandas, one conversion per column and
batch, no copy where the batch owns its memory). Under ``DataLoader(num_workers=k)``
each loader worker reads its own contiguous part of the rows, so no worker reads everything.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import IterableDataset, get_worker_info

from shardtrain.data.numeric import is_numeric
from shardtrain.data.sharding import plan_shards
from shardtrain.errors import DataSourceError, SchemaError

if TYPE_CHECKING:
    from shardtrain.data.data_connector import DataConnector


def _tensor_type_check(schema: pa.Schema, columns: Sequence[str]) -> None:
    for name in columns:
        kind = schema.field(name).type
        if not is_numeric(kind):
            raise SchemaError(
                f"column {name!r} has type {kind}, which cannot become a tensor; pass "
                "columns=[...] with numeric columns only, or encode it first.",
                column=name,
                available=schema.names,
            )


def wraps_without_copy(kind: pa.DataType) -> bool:
    """Whether a null-free column of this type can be handed to torch as it is (DLPack)."""
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def column_to_tensor(column: pa.Array, *, owned: bool = False) -> torch.Tensor:
    """One Arrow column as a 1-D tensor (decimals as float64, nulls as NaN).

    ``owned``: nothing else refers to the column's memory (a freshly decoded batch), so a
    null-free integer or float column is wrapped as it is (DLPack: no copy, same dtype);
    otherwise the values are copied, so writing to the tensor cannot change the caller's data.
    """
    if pa.types.is_decimal(column.type):
        column, owned = pc.cast(column, pa.float64()), True
    if owned and column.null_count == 0 and wraps_without_copy(column.type):
        return _wrap(column)
    return torch.from_numpy(column.to_numpy(zero_copy_only=False, writable=True))


def _wrap(column: pa.Array) -> torch.Tensor:
    # The capsule, not the array: torch.from_dlpack's protocol negotiation costs 3x more.
    return torch.from_dlpack(column.__dlpack__())


class ArrowTorchDataset(IterableDataset):
    """Yields ``dict[str, Tensor]``: one per batch, or one per row when ``batch_size`` is None."""

    def __init__(
        self,
        connector: DataConnector,
        *,
        batch_size: int | None,
        shuffle: bool,
        drop_last_batch: bool,
        columns: Sequence[str] | None,
        seed: int | None,
    ) -> None:
        super().__init__()
        self._connector = connector
        self._columns = connector._source.check_columns(columns) or connector.columns
        _tensor_type_check(connector.schema, self._columns)
        self._batch_size = batch_size
        self._shuffle = shuffle
        self._drop_last = drop_last_batch
        self._seed = seed
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Vary a seeded shuffle by epoch (call before each epoch, as with DistributedSampler)."""
        self._epoch = epoch

    def _seed_for(self, worker_id: int, worker_seed: int | None) -> int | None:
        if not self._shuffle:
            return None
        if self._seed is None:
            return worker_seed  # torch's per-worker seed differs per worker and per epoch
        return int(
            np.random.SeedSequence([self._seed, self._epoch, worker_id]).generate_state(1)[0]
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        connector = self._connector
        info = get_worker_info()
        worker_id, worker_seed = 0, None
        if info is not None:
            worker_id, worker_seed = info.id, info.seed
            if not connector._source.fork_safe:
                raise DataSourceError(
                    "a Ray Dataset cannot be read from DataLoader worker processes (they have "
                    "no Ray client); use num_workers=0: its blocks are already read in parallel.",
                )
            if info.num_workers > 1:
                start, stop = plan_shards(connector.num_rows, info.num_workers, equal=False)[
                    info.id
                ]
                connector = connector._part(start, stop)
        batches = connector.iter_batches(
            self._batch_size,
            columns=self._columns,
            shuffle=self._shuffle,
            seed=self._seed_for(worker_id, worker_seed),
            drop_last_batch=self._drop_last,
        )
        # Shuffled batches are always fresh (taken from the shuffle buffer). The per-column
        # decision is made once here, not per batch: only the null count varies by batch.
        owned = self._shuffle or connector._source.owns_batches
        schema = connector.schema
        plan = [
            (name, owned and wraps_without_copy(schema.field(name).type)) for name in self._columns
        ]
        for batch in batches:
            tensors = {
                name: _wrap(column)
                if wrap and not column.null_count
                else column_to_tensor(column, owned=owned)
                for (name, wrap), column in zip(plan, batch.columns, strict=True)
            }
            if self._batch_size is None:
                for row in range(batch.num_rows):
                    yield {name: tensor[row] for name, tensor in tensors.items()}
            else:
                yield tensors
