"""Any fsspec location as a stage: ``s3://``, ``gs://``, ``abfs://``, ``memory://`` ...

Object stores write each object whole, so a reader sees the old or the new file. Options
(endpoints, credentials) stay in the filesystem object and never reach ``uri``.
"""

from __future__ import annotations

from typing import Any

from shardtrain.errors import StageError
from shardtrain.stage.base import Stage, join


class FsspecStage(Stage):
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec

        protocol = url.split("://", 1)[0]
        try:
            fsspec.get_filesystem_class(protocol)
        except (ValueError, ImportError) as exc:
            raise StageError(
                f"unknown or unavailable stage scheme {protocol + '://'!r} ({exc}). Expected "
                "a local path, file://..., @DB.SCHEMA.STAGE/prefix (with a Snowpark session) or "
                "an fsspec URL whose package is installed (s3fs for s3://, gcsfs for gs://, "
                "adlfs for abfs://).",
                uri=url,
            ) from exc
        self.fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = root.rstrip("/")
        try:
            self.fs.exists(self.root or "/")
        except Exception as exc:  # network, auth, missing bucket: each backend has its own
            raise StageError(
                f"cannot reach the stage {url!r}: {exc}. Check the endpoint, the bucket and "
                "the credentials in storage_options or the environment.",
                uri=url,
            ) from exc
        super().__init__(url)

    def _full(self, path: str) -> str:
        return join(self.root, path)

    def _write(self, path, data):
        self.fs.pipe_file(self._full(path), data)

    def _upload(self, local, path):
        self.fs.put_file(str(local), self._full(path))

    def _read(self, path):
        return self.fs.cat_file(self._full(path))

    def _download(self, path, local):
        self.fs.get_file(self._full(path), str(local))

    def _exists(self, path):
        self.fs.invalidate_cache(self._full(path))
        return self.fs.isfile(self._full(path))

    def _list(self, prefix):
        base = self._full(prefix)
        self.fs.invalidate_cache(base)  # other processes may have written since
        if self.fs.isfile(base):
            return [prefix]
        return [_relative(p, self.root) for p in self.fs.find(base)]

    def _delete(self, prefix):
        target = self._full(prefix)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        return True


def _relative(path: str, root: str) -> str:
    path = path.lstrip("/")
    root = root.lstrip("/")
    return path[len(root) + 1 :] if root else path
