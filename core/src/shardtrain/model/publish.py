"""Publishing a model to ``<stage>/model/<request_id>/``: the one way models reach a stage.

Layout of one published model::

    model/<request_id>/_MANIFEST.json          written last; names the attempt folder
    model/<request_id>/attempt-<id>/<files>    the model files of that publish

Each publish uploads into a fresh attempt folder and then swaps the manifest (one whole-file
write), so a reader follows either the old manifest to the old files or the new manifest to
the new files: never a mix. A publish that dies before its manifest leaves only an attempt
folder no manifest names, and readers refuse a location without a manifest. Older attempts
are removed after the swap where the backend can delete.
"""

from __future__ import annotations

import importlib
import platform
from pathlib import Path
from typing import Any

from shardtrain.errors import ConfigError
from shardtrain.model.artifact import ModelArtifact, check_request_id, new_request_id
from shardtrain.model.frameworks import spec
from shardtrain.model.manifest import (
    MANIFEST,
    MANIFEST_FORMAT,
    file_entry,
    read_manifest,
    write_manifest,
)
from shardtrain.stage import open_stage
from shardtrain.stage.base import Stage, join
from shardtrain.version import __version__

__all__ = ["MANIFEST", "MANIFEST_FORMAT", "library_versions", "publish_model", "read_manifest"]


def library_versions(framework: str) -> dict[str, str]:
    """Versions of what trained a model (the framework's module, Arrow, Python, shardtrain)."""
    versions = {"shardtrain": __version__, "python": platform.python_version()}
    for name in ("pyarrow", spec(framework).module):
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            pass
    return versions


def publish_model(
    local_dir: str | Path,
    *,
    framework: str,
    stage: Stage | str | None = None,
    request_id: str | None = None,
    model_file: str | None = None,
    session: Any = None,
    storage_options: dict[str, Any] | None = None,
    **metadata: Any,
) -> ModelArtifact:
    """Publish the files of ``local_dir`` as a model; returns its ``ModelArtifact``.

    Args:
        local_dir: the folder holding the model files.
        framework: 'xgboost', 'lightgbm' or 'pytorch'.
        stage: a Stage or stage URI (default: the embedded default stage).
        request_id: the model's folder name; a new time-sortable id when None. Publishing
            again under the same id replaces the model atomically.
        model_file: the file ``load_model`` loads (relative to ``local_dir``).
        metadata: further ``ModelArtifact`` fields (metrics, params, input_cols, ...).
    """
    spec(framework)  # an unknown framework is refused before anything is uploaded
    if not isinstance(stage, Stage):
        stage = open_stage(stage, session=session, storage_options=storage_options)
    request_id = check_request_id(request_id) if request_id is not None else new_request_id()
    root = Path(local_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    if not files:
        raise ConfigError(f"nothing to publish: {root} holds no files.", path=str(root))
    entries = [file_entry(p, p.relative_to(root).as_posix()) for p in files]
    if model_file is not None and model_file not in {e["path"] for e in entries}:
        raise ConfigError(
            f"model_file {model_file!r} is not among the files of {root}: "
            f"{[e['path'] for e in entries]}.",
            model_file=model_file,
        )
    versions = {**library_versions(framework), **metadata.pop("versions", {})}
    base = join("model", request_id)
    artifact = ModelArtifact(
        uri=stage.child_uri(base),
        framework=framework,
        request_id=request_id,
        model_file=model_file,
        files=entries,
        versions=versions,
        **metadata,
    )
    attempt = f"attempt-{new_request_id()}"
    stage.upload_dir(root, join(base, attempt))
    _write_manifest(
        stage, base, {"format": MANIFEST_FORMAT, "attempt": attempt, **artifact.to_dict()}
    )
    _remove_older_attempts(stage, base, attempt)
    return artifact


def _write_manifest(stage: Stage, base: str, manifest: dict[str, Any]) -> None:
    # A module-level step of its own, so a test can kill a publisher right before it.
    write_manifest(stage, base, manifest)


def _remove_older_attempts(stage: Stage, base: str, current: str) -> None:
    """Delete attempt folders older than ``current`` (a concurrent newer one is kept)."""
    attempts = {p[len(base) + 1 :].split("/", 1)[0] for p in stage.list(base)}
    for attempt in sorted(a for a in attempts if a.startswith("attempt-") and a < current):
        if not stage.delete(join(base, attempt)):
            return  # backend cannot delete (Snowpark local_testing): stale files stay unread
