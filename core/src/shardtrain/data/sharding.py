"""Splitting rows among workers: the row windows (``plan_shards``) and the shards a
distributed run hands its ranks (``shard``).

Planning uses row counts alone, so it runs on the driver without reading any data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardtrain.config import check_int
from shardtrain.errors import EmptyDataError

if TYPE_CHECKING:
    from shardtrain.data.data_connector import DataConnector


def plan_shards(num_rows: int, world_size: int, equal: bool) -> list[tuple[int, int]]:
    """Row windows ``[start, stop)`` for each rank, balanced by rows.

    ``equal=False``: contiguous windows whose sizes differ by at most one row, covering
    every row exactly once. ``equal=True``: windows of identical size ``num_rows //
    world_size``; the last ``num_rows % world_size`` rows (fewer than ``world_size``) are
    dropped.
    """
    check_int(world_size, "world_size", world_size=world_size)
    if equal:
        size = num_rows // world_size
        return [(rank * size, (rank + 1) * size) for rank in range(world_size)]
    return [
        (rank * num_rows // world_size, (rank + 1) * num_rows // world_size)
        for rank in range(world_size)
    ]


def shard(
    connector: DataConnector, world_size: int, name: str, *, equal: bool | None = None
) -> list[DataConnector]:
    """One contiguous, non-empty part per worker, for a training or prediction run.

    ``equal`` defaults to the connector's own setting: a ``ShardedDataConnector`` built with
    ``equal=True`` gives every rank the same number of rows (a few trailing rows dropped);
    any other connector is split covering every row.
    """
    if equal is None:
        equal = bool(getattr(connector, "equal", False))
    if connector.num_rows < world_size:
        raise EmptyDataError(
            f"the {name} data has {connector.num_rows} rows, fewer than the {world_size} "
            "workers: a worker would get an empty shard. Use fewer workers or more data.",
            num_rows=connector.num_rows,
            world_size=world_size,
        )
    return [connector._part(a, b) for a, b in plan_shards(connector.num_rows, world_size, equal)]
