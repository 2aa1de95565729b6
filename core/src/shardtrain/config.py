"""Configs shared by the distributors. Frozen dataclasses, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from shardtrain.errors import ConfigError


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
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"FailureConfig.{name} must be an integer >= 0, got {value!r}.")
