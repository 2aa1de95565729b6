"""Publishing a model to ``<stage>/model/<request_id>/`` and reading it back, verified.

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

import hashlib
import importlib
import json
import platform
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shardtrain.artifact import ModelArtifact, check_request_id, new_request_id
from shardtrain.errors import ConfigError, ModelIntegrityError, StageError
from shardtrain.stage import open_stage
from shardtrain.stage.base import Stage, join

MANIFEST = "_MANIFEST.json"
MANIFEST_FORMAT = "shardtrain.model/1"
_FRAMEWORK_MODULE = {"xgboost": "xgboost", "lightgbm": "lightgbm", "pytorch": "torch"}


def library_versions(framework: str) -> dict[str, str]:
    """Versions of what trained a model (the framework's module, Arrow, Python, shardtrain)."""
    from shardtrain import __version__

    versions = {"shardtrain": __version__, "python": platform.python_version()}
    for name in ("pyarrow", _FRAMEWORK_MODULE.get(framework)):
        if name:
            try:
                versions[name] = importlib.import_module(name).__version__
            except ImportError:
                pass
    return versions


def _file_entry(path: Path, relative: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": relative, "size": path.stat().st_size, "sha256": digest.hexdigest()}


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
    if not isinstance(stage, Stage):
        stage = open_stage(stage, session=session, storage_options=storage_options)
    request_id = check_request_id(request_id) if request_id is not None else new_request_id()
    root = Path(local_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    if not files:
        raise ConfigError(f"nothing to publish: {root} holds no files.", path=str(root))
    entries = [_file_entry(p, p.relative_to(root).as_posix()) for p in files]
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
    stage.write_bytes(join(base, MANIFEST), json.dumps(manifest, indent=2).encode())


def _remove_older_attempts(stage: Stage, base: str, current: str) -> None:
    """Delete attempt folders older than ``current`` (a concurrent newer one is kept)."""
    attempts = {p[len(base) + 1 :].split("/", 1)[0] for p in stage.list(base)}
    for attempt in sorted(a for a in attempts if a.startswith("attempt-") and a < current):
        if not stage.delete(join(base, attempt)):
            return  # backend cannot delete (Snowpark local_testing): stale files stay unread


def read_manifest(stage: Stage) -> dict[str, Any]:
    """The manifest at the root of a model location; refuses anything that is not one."""
    if not stage.exists(MANIFEST):
        raise ModelIntegrityError(
            f"{stage.uri} is not a published model: it has no {MANIFEST} (the publish may "
            "have been interrupted; publish again under the same request_id).",
            uri=stage.uri,
        )
    try:
        manifest = json.loads(stage.read_bytes(MANIFEST))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelIntegrityError(
            f"{stage.uri}/{MANIFEST} is not valid JSON: {exc}", uri=stage.uri
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ModelIntegrityError(
            f"{stage.uri}/{MANIFEST} is not a shardtrain manifest ({MANIFEST_FORMAT}).",
            uri=stage.uri,
        )
    return manifest


def _location(artifact_or_uri: ModelArtifact | dict | str) -> tuple[str, ModelArtifact | None]:
    if isinstance(artifact_or_uri, ModelArtifact):
        return artifact_or_uri.uri, artifact_or_uri
    if isinstance(artifact_or_uri, dict):
        artifact = ModelArtifact.from_dict(artifact_or_uri)
        return artifact.uri, artifact
    if isinstance(artifact_or_uri, str):
        return artifact_or_uri, None
    raise ConfigError(
        f"expected a ModelArtifact, its dict or a model URI, got {type(artifact_or_uri).__name__}."
    )


def fetch_model(
    artifact_or_uri: ModelArtifact | dict | str,
    local_dir: str | Path,
    *,
    session: Any = None,
    storage_options: dict[str, Any] | None = None,
) -> ModelArtifact:
    """Download a published model's files into ``local_dir``, each checked against the
    manifest's size and sha256; returns the manifest's ``ModelArtifact``."""
    uri, expected = _location(artifact_or_uri)
    stage = open_stage(uri, session=session, storage_options=storage_options)
    for attempt_number in range(2):  # a concurrent republish may swap files under a reader
        manifest = read_manifest(stage)
        artifact = ModelArtifact.from_dict(manifest)
        if expected is not None and (
            expected.files != artifact.files or expected.request_id != artifact.request_id
        ):
            raise ModelIntegrityError(
                f"the model at {uri} does not match this artifact (it was published again "
                "since); load it by its URI to get the current one.",
                uri=uri,
            )
        try:
            for entry in artifact.files:
                _download_verified(
                    stage, join(manifest["attempt"], entry["path"]), entry, Path(local_dir)
                )
            return artifact
        except _MissingFile:
            if attempt_number == 1 or read_manifest(stage)["attempt"] == manifest["attempt"]:
                raise ModelIntegrityError(
                    f"{uri} names files that are missing from the stage; publish again under "
                    "the same request_id.",
                    uri=uri,
                ) from None
    raise AssertionError("unreachable")


class _MissingFile(Exception):
    pass


def _download_verified(stage: Stage, path: str, entry: dict[str, Any], local_dir: Path) -> None:
    target = local_dir.joinpath(*entry["path"].split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        stage.download_file(path, target)
    except (FileNotFoundError, StageError) as exc:
        if not stage.exists(path):
            raise _MissingFile(path) from exc
        raise
    actual = _file_entry(target, entry["path"])
    if actual != entry:
        target.unlink(missing_ok=True)
        raise ModelIntegrityError(
            f"{stage.child_uri(path)} does not match the manifest (size {actual['size']} vs "
            f"{entry['size']}, sha256 {actual['sha256'][:12]}... vs {entry['sha256'][:12]}...): "
            "the file was changed or corrupted after publishing; publish the model again.",
            uri=stage.child_uri(path),
            file=entry["path"],
        )


@contextmanager
def fetched_model(artifact_or_uri, **kwargs: Any) -> Iterator[tuple[ModelArtifact, Path]]:
    """A verified local copy of a model, in a temp folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="shardtrain-model-") as tmp:
        artifact = fetch_model(artifact_or_uri, tmp, **kwargs)
        yield artifact, Path(tmp)


def load_model(
    artifact_or_uri: ModelArtifact | dict | str,
    *,
    session: Any = None,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    """The model object: an ``xgboost.Booster``, a ``lightgbm.Booster``, or a torch state dict.

    Nothing is unpickled: XGBoost models are UBJSON/JSON, LightGBM models text, and torch
    state dicts are loaded with ``weights_only=True``.
    """
    with fetched_model(artifact_or_uri, session=session, storage_options=storage_options) as (
        artifact,
        folder,
    ):
        path = folder / _model_file(artifact)
        if artifact.framework == "xgboost":
            import xgboost

            booster = xgboost.Booster()
            booster.load_model(str(path))
            return booster
        if artifact.framework == "lightgbm":
            import lightgbm

            return lightgbm.Booster(model_file=str(path))
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)


def _model_file(artifact: ModelArtifact) -> str:
    if artifact.model_file:
        return artifact.model_file
    candidates = [
        e["path"]
        for e in artifact.files
        if e["path"].endswith((".ubj", ".json", ".txt", ".pt", ".pth"))
    ]
    if len(candidates) != 1:
        raise ModelIntegrityError(
            f"{artifact.uri} does not say which of its files is the model "
            f"({[e['path'] for e in artifact.files]}); use fetch_model and load it yourself.",
            uri=artifact.uri,
        )
    return candidates[0]
