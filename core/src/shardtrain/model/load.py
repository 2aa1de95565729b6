"""Reading a published model back: its files downloaded and checked against the manifest
(size and sha256), then loaded with its framework's spec. Nothing is unpickled: XGBoost
models are UBJSON/JSON, LightGBM models text, torch state dicts load ``weights_only``."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shardtrain.errors import ConfigError, ModelIntegrityError, StageError
from shardtrain.model.artifact import ModelArtifact
from shardtrain.model.frameworks import MODEL_SUFFIXES, spec
from shardtrain.model.manifest import file_entry, read_manifest
from shardtrain.stage import open_stage
from shardtrain.stage.base import Stage, join

__all__ = ["fetch_model", "fetched_model", "load_model", "read_manifest"]

#: How long a reader waits for a model whose manifest names files not there (yet) before it
#: calls the location broken; a republish that replaced it lets the reader retry at once.
REPUBLISH_WAIT_S = 5.0


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
    uri = stage.uri  # as every message shows it: no credentials
    local = Path(local_dir)
    deadline = time.monotonic() + REPUBLISH_WAIT_S
    while True:  # again while concurrent republishes swap the files under this reader
        manifest = read_manifest(stage)
        artifact = _artifact(manifest, uri)
        if expected is not None and (
            expected.files != artifact.files or expected.request_id != artifact.request_id
        ):
            raise ModelIntegrityError(
                f"the model at {uri} does not match this artifact (it was published again "
                "since); load it by its URI to get the current one.",
                uri=uri,
            )
        written: list[Path] = []
        try:
            for entry in artifact.files:
                _download_verified(
                    stage, join(manifest["attempt"], entry["path"]), entry, local, written
                )
            return artifact
        except _MissingFile:
            for path in written:  # files of a replaced model: not to be mixed with the next
                path.unlink(missing_ok=True)
            current = read_manifest(stage)["attempt"]
            if current == manifest["attempt"] and time.monotonic() > deadline:
                raise ModelIntegrityError(
                    f"{uri} names files that are missing from the stage; publish again under "
                    "the same request_id.",
                    uri=uri,
                ) from None
            if current == manifest["attempt"]:
                time.sleep(0.05)


def _artifact(manifest: dict[str, Any], uri: str) -> ModelArtifact:
    try:
        return ModelArtifact.from_dict(manifest)
    except ConfigError as exc:
        raise ModelIntegrityError(
            f"{uri} has a manifest that is not a valid model record ({exc.message}); publish "
            "the model again.",
            uri=uri,
        ) from None


class _MissingFile(Exception):
    """Internal: a file the manifest names is not on the stage (never leaves this module)."""


def _download_verified(
    stage: Stage, path: str, entry: dict[str, Any], local_dir: Path, written: list[Path]
) -> None:
    target = local_dir.joinpath(*entry["path"].split("/"))  # a checked relative path
    target.parent.mkdir(parents=True, exist_ok=True)
    written.append(target)
    try:
        stage.download_file(path, target)
    except (FileNotFoundError, StageError) as exc:
        if not stage.exists(path):
            raise _MissingFile(path) from exc
        raise
    actual = file_entry(target, entry["path"])
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
def fetched_model(
    artifact_or_uri: ModelArtifact | dict | str, **kwargs: Any
) -> Iterator[tuple[ModelArtifact, Path]]:
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
    """The model object: an ``xgboost.Booster``, a ``lightgbm.Booster``, or a torch state dict."""
    with fetched_model(artifact_or_uri, session=session, storage_options=storage_options) as (
        artifact,
        folder,
    ):
        return spec(artifact.framework).load_file(folder / _model_file(artifact))


def _model_file(artifact: ModelArtifact) -> str:
    if artifact.model_file:
        return artifact.model_file
    candidates = [e["path"] for e in artifact.files if e["path"].endswith(MODEL_SUFFIXES)]
    if len(candidates) != 1:
        raise ModelIntegrityError(
            f"{artifact.uri} does not say which of its files is the model "
            f"({[e['path'] for e in artifact.files]}); use fetch_model and load it yourself.",
            uri=artifact.uri,
        )
    return candidates[0]
