"""The manifest of a published model (``model/<request_id>/_MANIFEST.json``): its format, how
files are fingerprinted, and reading one back, refusing anything that is not a manifest.

Shared by publishing (which writes it last) and loading (which follows it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from shardtrain.errors import ModelIntegrityError
from shardtrain.stage.base import Stage, join

MANIFEST = "_MANIFEST.json"
MANIFEST_FORMAT = "shardtrain.model/1"


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
    return manifest
