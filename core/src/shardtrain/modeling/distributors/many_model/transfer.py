"""Moving a partition's files between its Ray task and the driver.

Why: only the driver can reach every stage. A Snowflake stage is written through the Snowpark
session the user passed (sessions do not travel to workers), and a ``memory://`` stage lives in
one process. So a task returns the folder it wrote (packed: relative path -> bytes, through
Ray's object store) and the driver publishes or uploads it as the result arrives; for reading,
the driver fetches a model from a stage the workers cannot reach and ships its bytes, while
workers read local and remote-filesystem stages themselves.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from shardtrain.model.artifact import check_request_id, request_id_from
from shardtrain.model.load import fetched_model
from shardtrain.model.publish import publish_model
from shardtrain.modeling.distributors.many_model.entities import PartitionDetails
from shardtrain.stage.base import Stage, join
from shardtrain.stage.fsspec import FsspecStage
from shardtrain.stage.local import LocalStage

#: Keys of a task's result that carry files for the driver (never written to the manifest).
FILES, PUBLISH, RESULT = "_files", "_publish", "_result"


def pack(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` as relative POSIX path -> bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def unpack(files: dict[str, bytes], folder: Path) -> Path:
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def workers_reach(stage: Stage) -> bool:
    """Whether a Ray worker can open ``stage`` itself: a local folder (shared or single-node)
    or a remote filesystem; not a Snowflake stage (needs the driver's session) nor
    ``memory://`` (one process's)."""
    if isinstance(stage, LocalStage):
        return True
    return isinstance(stage, FsspecStage) and not stage.uri.startswith("memory://")


def partition_request_id(run_id: str, folder: str) -> str:
    name = f"{run_id}.{folder}"
    return check_request_id(name) if len(name) < 200 else request_id_from(name)


def land(stage: Stage, run_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """The manifest record of a finished task, after the driver published (training) or
    uploaded (inference, when workers cannot reach the stage) what the task returned. A
    failure to publish makes the partition FAILED, with the traceback."""
    files = record.pop(FILES, None)
    publish = record.pop(PUBLISH, None)
    result = record.pop(RESULT, None)
    if record.get("status") != "DONE":
        return record
    try:
        if publish is not None:
            with tempfile.TemporaryDirectory(prefix="shardtrain-mm-publish-") as tmp:
                artifact = publish_model(
                    unpack(files or {}, Path(tmp)),
                    stage=stage,
                    request_id=partition_request_id(run_id, record["folder"]),
                    folder=join("model", run_id, record["folder"]),
                    **publish,
                )
            record["location"] = artifact.uri
            record["request_id"] = artifact.request_id
        else:
            for rel, data in (files or {}).items():
                stage.write_bytes(rel, data)
            record["location"] = stage.child_uri(result) if result else None
    except Exception as exc:  # noqa: BLE001 - the partition's failure, reported not raised
        details = PartitionDetails.from_dict(record)
        details.fail(exc)
        return {**record, **details.to_dict()}
    return record


def model_payload(
    stage: Stage, location: str, *, session: Any, storage_options: dict[str, Any] | None
) -> dict[str, Any]:
    """What an inference task needs to read a partition's model: its location when workers
    reach the stage, else the verified files fetched here (with the artifact's model file and
    input columns)."""
    if workers_reach(stage):
        return {"location": location}
    with fetched_model(location, session=session, storage_options=storage_options) as (
        artifact,
        folder,
    ):
        return {
            FILES: pack(folder),
            "model_file": artifact.model_file,
            "input_cols": list(artifact.input_cols),
        }
