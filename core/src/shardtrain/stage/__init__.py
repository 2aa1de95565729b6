"""Stages: where models go. ``open_stage(uri)`` picks the backend from the URI's form.

=============================================  ===========================================
form                                           backend
=============================================  ===========================================
``None``                                       ``$SHARDTRAIN_HOME/stage`` (embedded default)
``/path``, ``relative/path``, ``file:///path``  local folder
``@DB.SCHEMA.STAGE/prefix``, ``@STAGE/...``,    Snowflake stage (needs a Snowpark session)
``@~/...``, ``DB.SCHEMA.STAGE``
``s3://``, ``gs://``, ``abfs://``, ``memory://``  fsspec
=============================================  ===========================================
"""

from __future__ import annotations

from typing import Any

from shardtrain.errors import StageError
from shardtrain.home import shardtrain_home
from shardtrain.stage.base import Stage, normalize_path
from shardtrain.stage.fsspec import FsspecStage
from shardtrain.stage.local import LocalStage
from shardtrain.stage.snowflake import SnowflakeStage, parse_stage_uri


def default_stage_uri() -> str:
    """The embedded default stage: ``$SHARDTRAIN_HOME/stage``."""
    return str(shardtrain_home() / "stage")


def open_stage(
    uri: str | None = None,
    *,
    session: Any = None,
    storage_options: dict[str, Any] | None = None,
) -> Stage:
    """The stage at ``uri`` (the embedded default when None).

    Args:
        uri: a stage location in one of the forms above.
        session: the Snowpark session for a Snowflake stage.
        storage_options: fsspec options (endpoint, credentials) for an fsspec URL; they stay
            in the filesystem object and are never written anywhere.
    """
    if uri is None:
        uri = default_stage_uri()
    if not isinstance(uri, str) or not uri.strip():
        raise StageError(f"a stage location must be a non-empty string, got {uri!r}.", uri=uri)
    uri = uri.strip()
    if uri.startswith("@") or parse_stage_uri(uri) is not None:
        return SnowflakeStage(uri, session)
    if uri.startswith("file://"):
        return LocalStage(uri[len("file://") :])
    if "://" in uri:
        return FsspecStage(uri, storage_options)
    return LocalStage(uri)


__all__ = ["Stage", "default_stage_uri", "normalize_path", "open_stage"]
