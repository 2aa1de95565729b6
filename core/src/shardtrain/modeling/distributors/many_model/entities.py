"""The records of a many-model run: run and partition statuses, a partition's details, and
the Ray resources of each partition task (the vendor's ``ExecutionOptions``).

Why a module of its own: the run manifest, the training and inference tasks and the vendor's
``distributed_partition_function.entities`` path all speak these types; none of them needs
Ray or a stage to be imported.
"""

from __future__ import annotations

import enum
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

from shardtrain.errors import ConfigError


class RunStatus(enum.StrEnum):
    """A run's status (the vendor's ``RunStatus``)."""

    IN_PROGRESS = "IN_PROGRESS"
    SUCCESS = "SUCCESS"
    PARTIAL_FAILURE = "PARTIAL_FAILURE"
    FAILURE = "FAILURE"
    CANCELLED = "CANCELLED"


class PartitionStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"  # the user function raised (or returned no model)
    CANCELLED = "CANCELLED"
    INTERNAL_ERROR = "INTERNAL_ERROR"  # the task's process died (out of memory, node lost)


@dataclass
class PartitionDetails:
    """One partition of a run: status, model location, metrics, and the error if it failed."""

    partition_id: str
    status: PartitionStatus = PartitionStatus.PENDING
    folder: str = ""
    location: str | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    num_rows: int | None = None
    error: str | None = None
    traceback: str | None = None
    duration_s: float | None = None
    attempts: int = 0
    request_id: str | None = None
    serde: dict[str, Any] | None = None  # how the model was written (to read it back)

    @property
    def logs(self) -> str:
        """The failure's traceback ('' when it did not fail), as the vendor's ``logs``."""
        return self.traceback or ""

    def fail(self, exc: BaseException) -> None:
        """Record ``exc`` (raised by the partition's function, or by its publish) as the
        partition's failure, with the traceback of where it was raised."""
        self.status = PartitionStatus.FAILED
        self.error = f"{type(exc).__name__}: {exc}"
        self.traceback = "".join(traceback.format_exception(exc))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartitionDetails:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["status"] = PartitionStatus(known.get("status", "PENDING"))
        return cls(**known)


@dataclass(frozen=True)
class ExecutionOptions:
    """Resources and behaviour of each partition's Ray task (the vendor's field names).

    Args:
        num_cpus_per_worker: CPUs each partition task reserves (Ray queues the rest).
        num_gpus_per_worker: GPUs each reserves.
        memory_per_worker: bytes of memory each reserves (None: no reservation).
        max_retries: Ray retries of a partition whose worker process died (not of a train
            function that raised: that is the partition's ``FAILED``).
        fail_fast: cancel the partitions not started yet once one fails.
        use_head_node: accepted for vendor programs; Ray places tasks on any node here.
    """

    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    memory_per_worker: int | None = None
    max_retries: int = 1
    fail_fast: bool = False
    use_head_node: bool = True

    def __post_init__(self) -> None:
        if self.num_cpus_per_worker < 0 or self.num_gpus_per_worker < 0:
            raise ConfigError("num_cpus_per_worker / num_gpus_per_worker must be >= 0.")
        if self.num_cpus_per_worker == 0 and self.num_gpus_per_worker == 0:
            raise ConfigError("a partition task needs some CPU or GPU: set num_cpus_per_worker.")

    @classmethod
    def of(cls, value: ExecutionOptions | dict[str, Any] | None) -> ExecutionOptions:
        if isinstance(value, ExecutionOptions):
            return value
        try:
            return cls(**(value or {}))
        except TypeError as exc:
            raise ConfigError(
                f"execution_options: {exc}; the fields are {list(cls.__dataclass_fields__)}."
            ) from None

    def ray_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus_per_worker,
            "num_gpus": self.num_gpus_per_worker,
            "max_retries": self.max_retries,
        }
        if self.memory_per_worker:
            options["memory"] = int(self.memory_per_worker)
        return options
