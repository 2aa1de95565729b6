"""Publishing a model to ``<stage>/model/<request_id>/``: the one way models reach a stage.

Layout of one published model::

    model/<request_id>/_MANIFEST.json          written last; names the attempt folder
    model/<request_id>/attempt-<id>/<files>    the model files of that publish

Each publish uploads into a fresh attempt folder and then swaps the manifest (one whole-file
write), so a reader follows either the old manifest to the old files or the new manifest to
the new files: never a mix. A publish that dies before its manifest leaves only an attempt
folder no manifest names, and readers refuse a location without a manifest.

Several publishes of one request id at once (a zombie try and its retry): **the last manifest
written wins**. After writing its manifest a publisher reads it back; if another publisher's
manifest replaced it meanwhile, it removes its own attempt folder and raises
``PublishConflictError`` naming the winner, so a publisher that returns had its model
published. Attempt folders are removed only when no manifest can name them again: the one a
publisher saw published before its own swap, its own after losing, and those of publishers on
this machine that are no longer running (their name records the process). Anything else that
is left (rare: a concurrent publish that won and was replaced at once) is unread and goes with
``shardtrain stage gc``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import logging
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

from shardtrain.errors import ConfigError, PublishConflictError, StageError
from shardtrain.model.artifact import ModelArtifact, check_request_id, new_request_id
from shardtrain.model.frameworks import spec
from shardtrain.model.manifest import (
    MANIFEST,
    MANIFEST_FORMAT,
    file_entry,
    named_attempt,
    read_manifest,
    write_manifest,
)
from shardtrain.stage import open_stage
from shardtrain.stage.base import Stage, join, local_files, normalize_path
from shardtrain.version import __version__

logger = logging.getLogger("shardtrain")

__all__ = ["MANIFEST", "MANIFEST_FORMAT", "library_versions", "publish_model", "read_manifest"]


def library_versions(framework: str) -> dict[str, str]:
    """Versions of what trained a model (the framework's module, Arrow, Python, shardtrain).

    Read from the module when it is already imported, else from the installed package's
    metadata: importing xgboost (with scikit-learn) only to read its version costs seconds,
    and many-model training publishes on a driver that never trains.
    """
    versions = {"shardtrain": __version__, "python": platform.python_version()}
    for name in ("pyarrow", spec(framework).module):
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) if module is not None else None
        version = version or _installed_version(name)
        if version is not None:
            versions[name] = str(version)
    return versions


@functools.cache
def _installed_version(module: str) -> str | None:
    """The installed version of the distribution named ``module``, or of one named
    ``<module>-<variant>`` (xgboost comes as ``xgboost-cpu`` too); None when there is none.
    Variants are found by their ``.dist-info`` folder name: parsing every installed package's
    metadata (``distributions()``, ``packages_distributions()``) costs seconds."""
    try:
        return importlib.metadata.version(module)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        pass
    for entry in sys.path:
        try:
            found = sorted(Path(entry or ".").glob(f"{module}_*-*.dist-info"))
        except OSError:
            continue
        for info in found:
            return info.name[: -len(".dist-info")].split("-", 1)[1]
    return None


def publish_model(
    local_dir: str | Path,
    *,
    framework: str,
    stage: Stage | str | None = None,
    request_id: str | None = None,
    model_file: str | None = None,
    session: Any = None,
    storage_options: dict[str, Any] | None = None,
    curves_file: str | None = None,
    folder: str | None = None,
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
        curves_file: the training-curve image among the files (``model.curves``): the
            artifact's and manifest's ``curves`` is its URI.
        folder: the model's folder on the stage (default ``model/<request_id>``); many-model
            training publishes each partition under ``model/<run_id>/<partition>``.
        metadata: further ``ModelArtifact`` fields (metrics, params, input_cols, ...).
    """
    spec(framework)  # an unknown framework is refused before anything is uploaded
    if not isinstance(stage, Stage):
        stage = open_stage(stage, session=session, storage_options=storage_options)
    request_id = check_request_id(request_id) if request_id is not None else new_request_id()
    root = Path(local_dir)
    try:
        files = local_files(root) if root.is_dir() else []
    except StageError as exc:
        raise ConfigError(exc.message, path=exc.details.get("path")) from None
    if not files:
        raise ConfigError(f"nothing to publish: {root} holds no files.", path=str(root))
    entries = [file_entry(p, p.relative_to(root).as_posix()) for p in files]
    for name, value in (("model_file", model_file), ("curves_file", curves_file)):
        if value is not None and value not in {e["path"] for e in entries}:
            raise ConfigError(
                f"{name} {value!r} is not among the files of {root}: "
                f"{[e['path'] for e in entries]}.",
                **{name: value},
            )
    versions = {**library_versions(framework), **metadata.pop("versions", {})}
    try:
        base = normalize_path(folder) if folder is not None else join("model", request_id)
    except StageError as exc:
        raise ConfigError(exc.message, folder=folder) from None
    attempt = _attempt_name()
    prefix = join(base, attempt)
    artifact = ModelArtifact(
        uri=stage.child_uri(base),
        framework=framework,
        request_id=request_id,
        model_file=model_file,
        files=entries,
        versions=versions,
        curves=stage.child_uri(join(prefix, curves_file)) if curves_file else None,
        **metadata,
    )
    before = named_attempt(stage, base)
    for path, entry in zip(files, entries, strict=True):
        stage.upload_file(path, join(prefix, entry["path"]))
    _write_manifest(
        stage, base, {"format": MANIFEST_FORMAT, "attempt": attempt, **artifact.to_dict()}
    )
    winner = named_attempt(stage, base)
    replaced = {before} - {winner, attempt} if before is not None else set()
    if winner != attempt:
        _delete(stage, base, replaced | {attempt})
        raise PublishConflictError(
            f"another publish of request_id {request_id!r} replaced this one while it ran (the "
            f"last one to write its manifest wins): {artifact.uri} now holds attempt {winner}, "
            "not this model. If both published the same training there is nothing to do; "
            "otherwise publish again, after the other has finished.",
            uri=artifact.uri,
            winner=winner,
        )
    _delete(stage, base, replaced | _abandoned(stage, base, attempt))
    return artifact


def _write_manifest(stage: Stage, base: str, manifest: dict[str, Any]) -> None:
    # A module-level step of its own, so a test can kill a publisher right before it.
    write_manifest(stage, base, manifest)


@functools.cache
def _host_tag() -> str:
    """This machine, boot and process namespace, hashed: whose processes ``_alive`` sees."""
    parts = [socket.gethostname()]
    for read in (
        lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        lambda: os.readlink("/proc/self/ns/pid"),
    ):
        try:
            parts.append(read())
        except OSError:
            parts.append("")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def _attempt_name() -> str:
    """``attempt-<UTC time>-<random>-<host tag>-<pid>``: time-sortable (retention ages it by
    the time), and on this machine it tells whether its publisher still runs."""
    return f"attempt-{new_request_id()}-{_host_tag()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # not ours to signal: it exists
        return True
    return True


def _abandoned(stage: Stage, base: str, current: str) -> set[str]:
    """Attempt folders whose publisher ran on this machine and has stopped without its
    manifest being current: nothing will ever name them."""
    named = named_attempt(stage, base)
    tag = _host_tag()
    found = set()
    for name in {p[len(base) + 1 :].split("/", 1)[0] for p in stage.list(base)}:
        parts = name.split("-")
        if name in (current, named) or not name.startswith("attempt-") or len(parts) != 5:
            continue
        host, pid = parts[3], parts[4]
        if host == tag and pid.isdigit() and not _alive(int(pid)):
            found.add(name)
    return found


def _delete(stage: Stage, base: str, attempts: set[str]) -> None:
    """Housekeeping: what cannot be removed now stays unread until ``shardtrain stage gc``."""
    for name in sorted(attempts):
        try:
            if not stage.delete(join(base, name)):
                return  # backend cannot delete (Snowpark local_testing)
        except (OSError, StageError) as exc:
            logger.warning("could not remove %s: %s", stage.child_uri(join(base, name)), exc)
