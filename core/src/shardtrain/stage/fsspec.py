"""Any fsspec location as a stage: ``s3://``, ``gs://``, ``abfs://``, ``memory://`` ...

Object stores write each object whole, so a reader sees the old or the new file. Options
(endpoints, credentials) stay in the filesystem object and never reach ``uri``.
"""

from __future__ import annotations

import functools
from typing import Any

from shardtrain.errors import ShardtrainError, StageError, redact_url, scrub
from shardtrain.stage.base import Stage, join

#: Object stores whose first path segment is a bucket (or container) that must exist.
_BUCKETED = {"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl"}


def _guarded(method):
    """Errors of the filesystem library, with any credential of the URL masked: a
    ``FileNotFoundError`` stays one (callers test for it), anything else is a StageError."""

    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            return method(self, *args)
        except ShardtrainError:
            raise
        except FileNotFoundError as exc:
            raise FileNotFoundError(scrub(exc, self._url)) from None
        except Exception as exc:
            raise StageError(
                f"{self.uri}: {type(exc).__name__}: {scrub(exc, self._url)}", uri=self.uri
            ) from None

    return wrapper


class FsspecStage(Stage):
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec

        self._url = url  # may hold credentials: only the filesystem sees it
        safe = redact_url(url)
        protocol = url.split("://", 1)[0]
        try:
            fsspec.get_filesystem_class(protocol)
        except (ValueError, ImportError) as exc:
            raise StageError(
                f"unknown or unavailable stage scheme {protocol + '://'!r} ({exc}). Expected "
                "a local path, file://..., @DB.SCHEMA.STAGE/prefix (with a Snowpark session) or "
                "an fsspec URL whose package is installed (s3fs for s3://, gcsfs for gs://, "
                "adlfs for abfs://).",
                uri=safe,
            ) from None
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
            self.root = root.rstrip("/")
            self.fs.exists(self.root or "/")
            bucket = self.root.split("/", 1)[0]
            missing_bucket = protocol in _BUCKETED and bucket and not self.fs.exists(bucket)
        except Exception as exc:  # network, auth, missing bucket: each backend has its own
            raise StageError(
                f"cannot reach the stage {safe!r}: {type(exc).__name__}: {scrub(exc, url)}. "
                "Check the endpoint, the bucket and the credentials (give them in "
                "storage_options or the environment, not in the URL).",
                uri=safe,
            ) from None
        if missing_bucket:  # found now, not when the trained model is written
            raise StageError(
                f"the bucket of the stage {safe!r} does not exist (or these credentials cannot "
                "see it); create it or fix the location.",
                uri=safe,
            )
        super().__init__(safe)

    def _full(self, path: str) -> str:
        return join(self.root, path)

    @_guarded
    def _write(self, path, data):
        self.fs.pipe_file(self._full(path), data)

    @_guarded
    def _upload(self, local, path):
        self.fs.put_file(str(local), self._full(path))

    @_guarded
    def _read(self, path):
        return self.fs.cat_file(self._full(path))

    @_guarded
    def _download(self, path, local):
        self.fs.get_file(self._full(path), str(local))

    @_guarded
    def _exists(self, path):
        self.fs.invalidate_cache(self._full(path))
        return self.fs.isfile(self._full(path))

    @_guarded
    def _list(self, prefix):
        base = self._full(prefix)
        self.fs.invalidate_cache(base)  # other processes may have written since
        if self.fs.isfile(base):
            return [prefix]
        return [_relative(p, self.root) for p in self.fs.find(base)]

    @_guarded
    def _delete(self, prefix):
        target = self._full(prefix)
        try:
            if self.fs.exists(target):
                self.fs.rm(target, recursive=True)
        except FileNotFoundError:  # another process removed it meanwhile
            pass
        return True


def _relative(path: str, root: str) -> str:
    path = path.lstrip("/")
    root = root.lstrip("/")
    return path[len(root) + 1 :] if root else path
