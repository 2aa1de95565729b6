"""``ManyModelRun``: a run's progress, its manifest on the stage, and its models.

Why: the driver is the one place that sees every partition finish. It collects results with a
``ray.wait`` loop, publishes each partition's returned model folder through the run's stage as
it arrives (so a Snowflake stage works: only the driver has the session), and rewrites the run
manifest ``<stage>/model/<run_id>/_RUN.json`` (whole-file writes, at most every
``MANIFEST_INTERVAL_S`` and always at the end). ``restore_from`` reads a run back anywhere.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shardtrain.errors import ConfigError, PartitionError, StageError
from shardtrain.model.artifact import check_request_id, new_request_id
from shardtrain.model.load import fetched_model
from shardtrain.modeling.distributors.many_model.entities import (
    ExecutionOptions,
    PartitionDetails,
    PartitionStatus,
    RunStatus,
)
from shardtrain.modeling.distributors.many_model.partitions import Partition, plan_partitions
from shardtrain.modeling.distributors.many_model.transfer import land
from shardtrain.modeling.serde import ModelSerde, serde_from_record
from shardtrain.stage import open_stage
from shardtrain.stage.base import Stage, join

RUN_MANIFEST = "_RUN.json"
RUN_FORMAT = "shardtrain.many_model/1"
#: Seconds between run-manifest rewrites while partitions finish (the last write is always made).
MANIFEST_INTERVAL_S = 2.0


def new_manifest(kind: str, run_id: str, stage: Stage, partition_by: str, **more: Any) -> dict:
    """A run manifest's header (its ``partitions`` filled by the caller)."""
    return {
        "format": RUN_FORMAT,
        "run_id": run_id,
        "kind": kind,
        "stage": stage.uri,
        "partition_by": partition_by,
        "created_at": datetime.now(UTC).isoformat(),
        **more,
    }


def is_run_manifest(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == RUN_FORMAT


class ManyModelRun:
    """A many-model training run: its partitions' status, their models, and its manifest.

    Returned by ``ManyModelTraining.run`` while partitions train; ``wait()`` blocks until all
    are done. ``ManyModelRun.restore_from(run_id, stage_name)`` reads a finished run back from
    its stage in any process.
    """

    def __init__(
        self,
        run_id: str,
        stage_name: str,
        manifest: dict[str, Any],
        *,
        stage: Stage | None = None,
        serde: ModelSerde | None = None,
        pending: dict[Any, str] | None = None,
        storage_options: dict[str, Any] | None = None,
        session: Any = None,
    ) -> None:
        self.run_id = run_id
        self.stage_name = stage_name
        self._manifest = manifest
        self._stage = stage or open_stage(
            stage_name, session=session, storage_options=storage_options
        )
        self._serde = serde
        self._pending = dict(pending or {})  # ObjectRef -> partition id
        self._storage_options = storage_options
        self._session = session
        self._written = 0.0
        self._fail_fast = False

    # -- where it lives ------------------------------------------------------------------
    @staticmethod
    def manifest_path(run_id: str) -> str:
        return join("model", run_id, RUN_MANIFEST)

    @property
    def uri(self) -> str:
        return self._stage.child_uri(join("model", self.run_id))

    @classmethod
    def restore_from(
        cls,
        run_id: str,
        stage_name: str,
        *,
        serde: ModelSerde | None = None,
        session: Any = None,
        storage_options: dict[str, Any] | None = None,
    ) -> ManyModelRun:
        """The run ``run_id`` as recorded on ``stage_name`` (``StageError`` if there is none)."""
        check_request_id(run_id)
        stage = open_stage(stage_name, session=session, storage_options=storage_options)
        manifest = read_run_manifest(stage, run_id)
        if manifest is None:
            raise StageError(
                f"no many-model run {run_id!r} on {stage.uri} (no {cls.manifest_path(run_id)}): "
                "check the run id and the stage.",
                run_id=run_id,
                uri=stage.uri,
            )
        return cls(
            run_id,
            stage_name,
            manifest,
            stage=stage,
            serde=serde,
            storage_options=storage_options,
            session=session,
        )

    # -- progress --------------------------------------------------------------------------
    def _collect(self, timeout: float | None) -> None:
        import ray

        if not self._pending:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=left)
            if not ready:
                break
            for ref in ready:
                pid = self._pending.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - the task's process died or was cancelled
                    cancelled = type(exc).__name__ == "TaskCancelledError"
                    record = {
                        **self._manifest["partitions"][pid],
                        "status": "CANCELLED" if cancelled else "INTERNAL_ERROR",
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": "".join(traceback.format_exception(exc)),
                    }
                record = land(self._stage, self.run_id, record)
                previous = self._manifest["partitions"].get(pid, {})
                record["attempts"] = previous.get("attempts", 0) + 1
                self._manifest["partitions"][pid] = record
                if record.get("serde") and "serde" not in self._manifest:
                    self._manifest["serde"] = record["serde"]
                if self._fail_fast and record["status"] != "DONE":
                    self.cancel()
            if time.monotonic() - self._written > MANIFEST_INTERVAL_S or not self._pending:
                self._write()
            if deadline is not None and time.monotonic() >= deadline:
                break

    def cancel(self) -> None:
        """Cancel the partitions not finished yet (finished ones keep their models)."""
        import ray

        for ref in list(self._pending):
            ray.cancel(ref)

    def _write(self) -> None:
        self._manifest["status"] = self._status().value
        self._manifest["updated_at"] = datetime.now(UTC).isoformat()
        self._stage.write_bytes(
            self.manifest_path(self.run_id),
            json.dumps(self._manifest, indent=2, default=str).encode(),
        )
        self._written = time.monotonic()

    def _status(self) -> RunStatus:
        if self._pending:
            return RunStatus.IN_PROGRESS
        states = [p["status"] for p in self._manifest["partitions"].values()]
        if all(s == "DONE" for s in states):
            return RunStatus.SUCCESS
        if any(s == "DONE" for s in states):
            return RunStatus.PARTIAL_FAILURE
        return RunStatus.FAILURE

    def wait(self, timeout: float | None = None) -> RunStatus:
        """Block until every partition finished (or ``timeout`` seconds); the run's status."""
        self._collect(timeout)
        return self._status()

    @property
    def status(self) -> RunStatus:
        self._collect(0)
        return self._status()

    @property
    def partition_details(self) -> dict[str, PartitionDetails]:
        """Partition id -> its details (status, location, metrics, error and traceback)."""
        self._collect(0)
        out = {}
        for pid, record in self._manifest["partitions"].items():
            details = PartitionDetails.from_dict(record)
            if record.get("status") == "PENDING" and self._pending:
                details.status = PartitionStatus.RUNNING
            out[pid] = details
        return out

    def get_progress(self) -> dict[str, int]:
        """How many partitions are in each status."""
        counts: dict[str, int] = {}
        for details in self.partition_details.values():
            counts[details.status.value] = counts.get(details.status.value, 0) + 1
        return counts

    @property
    def manifest(self) -> dict[str, Any]:
        """The run manifest (a copy): what the Airflow operator and Prefect task return."""
        self._collect(0)
        return json.loads(json.dumps(self._manifest, default=str))

    def to_dict(self) -> dict[str, Any]:
        return self.manifest

    # -- models ----------------------------------------------------------------------------
    def get_model(self, partition_id: Any) -> Any:
        """The model of a partition, read back through its serde (``PartitionError`` if the
        partition has no model)."""
        pid = str(partition_id)
        details = self.partition_details.get(pid)
        if details is None:
            raise PartitionError(
                f"run {self.run_id!r} has no partition {pid!r}; it has "
                f"{sorted(self._manifest['partitions'])[:20]}.",
                partition_id=pid,
                run_id=self.run_id,
            )
        if details.status != PartitionStatus.DONE or not details.location:
            raise PartitionError(
                f"partition {pid!r} of run {self.run_id!r} has no model ({details.status.value}"
                f"{': ' + details.error if details.error else ''}).",
                partition_id=pid,
                run_id=self.run_id,
                worker_traceback=details.traceback,
            )
        record = self._manifest["partitions"][pid].get("serde") or self._manifest.get("serde")
        serde = serde_from_record(record or {}, self._serde)
        with fetched_model(
            details.location, session=self._session, storage_options=self._storage_options
        ) as (artifact, folder):
            return serde.read(str(folder / (artifact.model_file or serde.filename)))

    def failures(self) -> dict[str, PartitionDetails]:
        return {
            p: d for p, d in self.partition_details.items() if d.status == PartitionStatus.FAILED
        }


def read_run_manifest(stage: Stage, run_id: str) -> dict[str, Any] | None:
    path = ManyModelRun.manifest_path(run_id)
    if not stage.exists(path):
        return None
    try:
        manifest = json.loads(stage.read_bytes(path))
    except ValueError as exc:
        raise StageError(f"{stage.child_uri(path)} is not valid JSON: {exc}") from exc
    if not is_run_manifest(manifest):
        raise StageError(f"{stage.child_uri(path)} is not a many-model run manifest.")
    return manifest


def session_for(session: Any, snowpark_dataframe: Any) -> Any:
    """The Snowpark session for a Snowflake stage: the one given, else the DataFrame's (as
    the vendor's API finds it, from ``snowpark_dataframe=``)."""
    return session if session is not None else getattr(snowpark_dataframe, "session", None)


def prepare_run(
    snowpark_dataframe: Any,
    data: Any,
    run_id: str | None,
    execution_options: ExecutionOptions | dict | None,
    partition_by: str,
    storage_options: dict[str, Any] | None,
    ray_address: str | None = None,
) -> tuple[str, ExecutionOptions, list[Partition]]:
    """What training and inference check and plan before any task starts: one data argument,
    the run id, the task options, a Ray connection, and the partitions."""
    from shardtrain.runtime.cluster import connect

    if (snowpark_dataframe is None) == (data is None):
        raise ConfigError("give exactly one of snowpark_dataframe= or data=.")
    run_id = check_request_id(run_id) if run_id is not None else new_request_id()
    options = ExecutionOptions.of(execution_options)
    connect(ray_address)
    parts = plan_partitions(
        snowpark_dataframe if data is None else data, partition_by, storage_options
    )
    return run_id, options, parts


def submit(
    task: Callable[..., dict[str, Any]],
    options: ExecutionOptions,
    func: Callable | None,
    parts: list[Partition],
    args: Callable[[Partition], tuple],
) -> dict[Any, str]:
    """One Ray task a partition, ``task(func, *args(part))`` (the user function put in the
    object store once); ObjectRef -> partition id."""
    import ray

    remote = ray.remote(task).options(**options.ray_options())
    func_ref = ray.put(func)
    return {remote.remote(func_ref, *args(part)): part.partition_id for part in parts}
