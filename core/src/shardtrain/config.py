"""Every configuration a fit takes: frozen dataclasses, validated once, on construction.

``check_int`` is the one "an integer (not a bool) >= n" check, shared by the configs here
and by the arguments checked elsewhere (world sizes, batch sizes, rounds). Nothing
downstream validates a config again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shardtrain.errors import ConfigError, ScalingConfigError


def check_int(
    value: object,
    name: str,
    *,
    minimum: int = 1,
    auto: bool = False,
    also: str | None = None,
    error: type[ConfigError] = ConfigError,
    **details: object,
) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum`` (or -1 when ``auto``), else
    ``error`` saying so (``also`` names a further accepted value the caller handles);
    ``details`` become the error's attributes."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or (value < minimum and not (auto and value == -1))
    ):
        what = {0: "an integer >= 0", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        if auto:
            what += " or -1 (automatic)"
        if also:
            what += f" or {also}"
        raise error(f"{name} must be {what}, got {value!r}.", **details)
    return value


def check_number(value: object, name: str, *, error: type[ConfigError] = ConfigError) -> float:
    """``value`` if it is an int or float (not a bool) >= 0, else ``error``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise error(f"{name} must be a number >= 0, got {value!r}.", field=name)
    return value


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_bytes(value: object, name: str, *, error: type[ConfigError] = ConfigError) -> int:
    """A size in bytes: an int (not a bool) >= 1, or a string such as ``"512MiB"``, ``"2GiB"``,
    ``"1.5GB"`` (B, KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024); -1 or
    ``None`` is -1 (automatic)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value == -1):
        return -1
    if isinstance(value, str):
        match = _SIZE.match(value)
        unit = match.group(2).lower() if match else None
        if match and unit in _UNITS:
            size = int(float(match.group(1)) * _UNITS[unit])
            if size >= 1:
                return size
        raise error(
            f"{name} must be a size such as '512MiB', '2GiB', '1.5GB' or a number of bytes, "
            f"got {value!r}.",
            field=name,
        )
    return check_int(value, name, auto=True, error=error, also="a size string ('2GiB')", field=name)


@dataclass(frozen=True)
class FailureConfig:
    """How a distributed fit survives a worker dying.

    Args:
        max_failures: worker-group restarts allowed per fit (0: the first failure is fatal).
        checkpoint_frequency: boosting rounds between checkpoints (0: no checkpoints; a
            restart then starts from scratch). Checkpoints go to the run's stage location.

    Example:
        >>> FailureConfig(max_failures=2, checkpoint_frequency=10)
        FailureConfig(max_failures=2, checkpoint_frequency=10)
    """

    max_failures: int = 0
    checkpoint_frequency: int = 10

    def __post_init__(self) -> None:
        for name in ("max_failures", "checkpoint_frequency"):
            check_int(getattr(self, name), f"FailureConfig.{name}", minimum=0)


@dataclass(frozen=True)
class GBDTScalingConfig:
    """Workers, CPUs per worker, GPUs and memory per worker: -1 is automatic, ``use_gpu=None``
    detects.

    ``memory_per_worker`` is each rank's memory budget for its shard, in bytes or as a string
    (``"2GiB"``, ``"500MB"``); -1 or ``None`` (the default) derives it from what Ray reports:
    half of a node's ``memory`` resource divided among the workers placed on it
    (``shardtrain.runtime.memory``). Before any worker starts, each rank's shard is checked
    against it: a shard over budget trains from external memory where the framework can
    (XGBoost), and is refused with ``MemoryBudgetError`` where it cannot. Normalised to bytes
    (-1: automatic) on construction.
    """

    num_workers: int = -1
    num_cpu_per_worker: int = -1
    use_gpu: bool | None = None
    memory_per_worker: int | str | None = -1

    def __post_init__(self) -> None:
        for name in ("num_workers", "num_cpu_per_worker"):
            check_int(getattr(self, name), name, auto=True, error=ScalingConfigError, field=name)
        object.__setattr__(
            self,
            "memory_per_worker",
            parse_bytes(self.memory_per_worker, "memory_per_worker", error=ScalingConfigError),
        )
        if self.use_gpu not in (None, True, False):
            raise ScalingConfigError(
                f"use_gpu must be True, False or None, got {self.use_gpu!r}.", field="use_gpu"
            )


@dataclass(frozen=True)
class XGBScalingConfig(GBDTScalingConfig):
    """How many workers, CPUs and GPUs a fit uses; -1 is automatic, ``use_gpu=None`` detects.

    By default one worker per node with all of its CPUs (or one per GPU), as the vendor does.

    Example:
        >>> XGBScalingConfig(num_workers=2, num_cpu_per_worker=1)
        XGBScalingConfig(num_workers=2, num_cpu_per_worker=1, use_gpu=None, memory_per_worker=-1)
        >>> XGBScalingConfig(num_workers=2, memory_per_worker="1GiB").memory_per_worker
        1073741824
    """


@dataclass(frozen=True)
class LightGBMScalingConfig(GBDTScalingConfig):
    """The same fields as ``XGBScalingConfig``: -1 automatic, ``use_gpu=None`` detects."""


@dataclass(frozen=True)
class WorkerResourceConfig:
    """Resources of one worker. Example: ``WorkerResourceConfig(num_cpus=0, num_gpus=4)``."""

    num_cpus: float = 1
    num_gpus: float = 0

    def __post_init__(self) -> None:
        for name in ("num_cpus", "num_gpus"):
            check_number(getattr(self, name), name, error=ScalingConfigError)
        if self.num_cpus == 0 and self.num_gpus == 0:
            raise ScalingConfigError(
                "each worker needs some CPU or GPU: got num_cpus=0, num_gpus=0.",
                field="resource_requirements_per_worker",
            )


@dataclass(frozen=True)
class PyTorchScalingConfig:
    """Nodes, workers per node (-1: as many as fit) and resources per worker.

    Example:
        >>> PyTorchScalingConfig(num_nodes=1, num_workers_per_node=2)
        PyTorchScalingConfig(num_nodes=1, num_workers_per_node=2, resource_requirements_per_worker=None)
    """

    num_nodes: int = 1
    num_workers_per_node: int = -1
    resource_requirements_per_worker: WorkerResourceConfig | None = None

    def __post_init__(self) -> None:
        check_int(self.num_nodes, "num_nodes", error=ScalingConfigError, field="num_nodes")
        check_int(
            self.num_workers_per_node,
            "num_workers_per_node",
            auto=True,
            error=ScalingConfigError,
            field="num_workers_per_node",
        )
