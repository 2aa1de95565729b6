"""The manifest of a published model (``model/<request_id>/_MANIFEST.json``): its format, how
files are fingerprinted, and reading one back, refusing anything that is not a manifest.

Shared by publishing (which writes it last) and loading (which follows it). ``curves`` names
the training-curve image's URI (``model.curves``); manifests without it, older ones included,
read the same, and older readers ignore it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from shardtrain.errors import ModelIntegrityError, StageError
from shardtrain.stage.base import Stage, join, normalize_path

MANIFEST = "_MANIFEST.json"
MANIFEST_FORMAT = "shardtrain.model/1"
_ATTEMPT = re.compile(r"attempt-[A-Za-z0-9_-][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def file_entry(path: Path, relative: str) -> dict[str, Any]:
    """A file's manifest entry: its stage-relative path, size and sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": relative, "size": path.stat().st_size, "sha256": digest.hexdigest()}


def write_manifest(stage: Stage, base: str, manifest: dict[str, Any]) -> None:
    """Write the manifest in one whole-file write (readers see the old or the new one)."""
    stage.write_bytes(join(base, MANIFEST), json.dumps(manifest, indent=2).encode())


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
    check_manifest(manifest, f"{stage.uri}/{MANIFEST}")
    return manifest


def check_manifest(manifest: dict[str, Any], where: str) -> None:
    """Refuse a manifest whose paths could reach outside the model folder, or that names a
    model file no checksum covers; checked before any file is touched."""

    def bad(what: str) -> ModelIntegrityError:
        return ModelIntegrityError(
            f"{where} is not a valid manifest: {what}. Publish the model again.", uri=where
        )

    attempt = manifest.get("attempt")
    if not isinstance(attempt, str) or not _ATTEMPT.fullmatch(attempt):
        raise bad(f"'attempt' must name an attempt folder, got {attempt!r}")
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise bad(f"'files' must list the model's files, got {files!r}")
    paths: set[str] = set()
    for entry in files:
        if not isinstance(entry, dict):
            raise bad(f"a file entry is not an object: {entry!r}")
        path, size, sha = entry.get("path"), entry.get("size"), entry.get("sha256")
        try:
            safe = isinstance(path, str) and normalize_path(path) == path
        except StageError:
            safe = False
        if not safe or not isinstance(path, str):
            raise bad(f"file path {path!r} is not a plain relative path inside the model folder")
        if (
            type(size) is not int
            or size < 0
            or not isinstance(sha, str)
            or not _SHA256.fullmatch(sha)
        ):
            raise bad(f"file {path!r} has no valid size and sha256")
        if path in paths:
            raise bad(f"file {path!r} is listed twice")
        paths.add(path)
    curves = manifest.get("curves")
    if curves is not None and not isinstance(curves, str):
        raise bad(f"'curves' must be the training-curve image's URI, got {curves!r}")
    model_file = manifest.get("model_file")
    if model_file is not None and model_file not in paths:
        raise bad(f"model_file {model_file!r} is not one of its files {sorted(paths)}")


def named_attempt(stage: Stage, base: str) -> str | None:
    """The attempt folder the manifest at ``base`` names now (None: no readable manifest)."""
    try:
        manifest = json.loads(stage.read_bytes(join(base, MANIFEST)))
    except (StageError, FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    attempt = manifest.get("attempt") if isinstance(manifest, dict) else None
    return attempt if isinstance(attempt, str) else None
