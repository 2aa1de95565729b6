"""ShardedDataConnector: the same data, split into one disjoint shard per worker."""

from __future__ import annotations

from typing import Any

from shardtrain.data.data_connector import DataConnector
from shardtrain.data.sharding import plan_shards
from shardtrain.data.source import Source
from shardtrain.errors import ConfigError, EmptyDataError, OutsideWorkerError
from shardtrain.runtime.worker_context import current_worker

__all__ = ["ShardedDataConnector", "plan_shards"]


class ShardedDataConnector(DataConnector):
    """A DataConnector whose rows are split among the workers of a distributed run.

    Shards are planned on the driver from row counts alone (Parquet footers, block and
    result-batch counts): they are deterministic for the same data and world size, disjoint,
    and each worker reads only its own rows.

    Example:
        >>> import pandas as pd
        >>> from shardtrain import ShardedDataConnector
        >>> sdc = ShardedDataConnector.from_pandas(pd.DataFrame({"x": range(10)}))
        >>> [s.num_rows for s in sdc.shards(3)]
        [3, 3, 4]
        >>> [s.num_rows for s in ShardedDataConnector.from_pandas(
        ...     pd.DataFrame({"x": range(10)}), equal=True).shards(3)]
        [3, 3, 3]
    """

    def __init__(self, source: Source, equal: bool = False) -> None:
        super().__init__(source)
        self.equal = equal

    def shards(self, world_size: int) -> list[DataConnector]:
        """One DataConnector per rank; refuses a split that would leave a shard empty."""
        windows = plan_shards(self.num_rows, world_size, self.equal)
        if any(start == stop for start, stop in windows):
            raise EmptyDataError(
                f"{self.num_rows} rows cannot fill {world_size} shards; use at most "
                f"{max(self.num_rows, 1)} workers, or more data.",
                num_rows=self.num_rows,
                world_size=world_size,
            )
        return [self._part(start, stop) for start, stop in windows]

    def get_shard(self, rank: int | None = None, world_size: int | None = None) -> DataConnector:
        """This worker's shard inside a training function, or any shard given explicitly."""
        if rank is None and world_size is None:
            info = current_worker()
            if info is None:
                raise OutsideWorkerError(
                    "get_shard() without arguments only works inside a distributor's "
                    "training function; elsewhere call get_shard(rank, world_size)."
                )
            rank, world_size = info.rank, info.world_size
        if rank is None or world_size is None:
            raise ConfigError("give both rank and world_size, or neither.")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside 0..{world_size - 1}.", rank=rank)
        return self.shards(world_size)[rank]

    def __reduce__(self) -> tuple[Any, ...]:
        return (ShardedDataConnector, (self._source, self.equal))
