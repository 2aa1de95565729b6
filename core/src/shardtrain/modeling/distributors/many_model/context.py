"""``PartitionContext``: what a train or inference function gets besides its rows.

Why a module of its own: it runs inside the partition's Ray task, where there is no stage to
write to (a Snowflake stage needs the driver's Snowpark session), so it only collects metrics
and writes extra files into the task's local folder; the driver publishes that folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shardtrain.errors import ConfigError


class PartitionContext:
    """What a train (or inference) function gets besides its data (the vendor's
    ``PartitionContext``): the partition id, and a place for extra files and metrics that are
    published with the partition's model."""

    def __init__(self, partition_id: str, run_id: str, stage_name: str, folder: Path) -> None:
        self.partition_id = partition_id
        self.run_id = run_id
        self.stage_name = stage_name
        self._folder = folder
        self.metrics: dict[str, dict[str, float]] = {}

    def log_metrics(
        self, metrics: dict[str, float] | None = None, *, split: str = "train", **more: float
    ) -> None:
        """Record metrics for this partition: they go into its model's artifact and the run
        manifest (``{split: {name: value}}``)."""
        values = {**(metrics or {}), **more}
        self.metrics.setdefault(split, {}).update({k: float(v) for k, v in values.items()})

    def upload_to_stage(
        self, obj: Any, filename: str, write_function: Callable[[Any, str], None] | None = None
    ) -> None:
        """Write ``obj`` as ``filename`` beside the partition's model (published, checksummed,
        with it). ``write_function(obj, path)`` writes it; without one, bytes/str are written
        as they are and anything else as JSON."""
        path = self._folder / filename
        if self._folder.resolve() not in path.resolve().parents:
            raise ConfigError(f"filename {filename!r} must stay inside the partition folder.")
        path.parent.mkdir(parents=True, exist_ok=True)
        if write_function is not None:
            write_function(obj, str(path))
        elif isinstance(obj, bytes):
            path.write_bytes(obj)
        elif isinstance(obj, str):
            path.write_text(obj)
        else:
            path.write_text(json.dumps(obj, default=str))
