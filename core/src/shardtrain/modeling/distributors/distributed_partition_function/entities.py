"""``RunStatus``, ``PartitionStatus`` and ``ExecutionOptions`` where vendor programs import
them from; they live in ``many_model``."""

from shardtrain.modeling.distributors.many_model.entities import (
    ExecutionOptions,
    PartitionDetails,
    PartitionStatus,
    RunStatus,
)

__all__ = ["ExecutionOptions", "PartitionDetails", "PartitionStatus", "RunStatus"]
