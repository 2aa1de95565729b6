"""A local folder as a stage: the embedded default (``$SHARDTRAIN_HOME/stage``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from shardtrain.errors import StageError
from shardtrain.stage.base import Stage

_TEMP_MARK = ".tmp-"


class LocalStage(Stage):
    """Files under a local folder; every write goes to a temp name and is renamed into place."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()
        if self.root.is_file():
            raise StageError(
                f"the stage location {self.root} is a file; give a folder.", path=str(self.root)
            )
        super().__init__(str(self.root))

    def _path(self, path: str) -> Path:
        return self.root.joinpath(*path.split("/")) if path else self.root

    def _write(self, path, data):
        self._atomic(path, lambda tmp: tmp.write_bytes(data))

    def _upload(self, local, path):
        self._atomic(path, lambda tmp: shutil.copyfile(local, tmp))

    def _atomic(self, path: str, fill) -> None:
        target = self._path(path)
        tmp = target.with_name(f"{target.name}{_TEMP_MARK}{uuid.uuid4().hex}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fill(tmp)
            os.replace(tmp, target)
        except OSError as exc:
            raise StageError(
                f"cannot write {target}: {exc}. Choose a writable stage location "
                "(artifact_stage_location, or SHARDTRAIN_HOME for the default).",
                path=str(target),
            ) from exc
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    def _read(self, path):
        return self._path(path).read_bytes()

    def _download(self, path, local):
        shutil.copyfile(self._path(path), local)

    def _exists(self, path):
        return self._path(path).is_file()

    def _list(self, prefix):
        base = self._path(prefix)
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        # os.walk skips folders another process removes meanwhile (rglob raises).
        return [
            Path(folder, name).relative_to(self.root).as_posix()
            for folder, _, names in os.walk(base)
            for name in names
            if _TEMP_MARK not in name
        ]

    def _delete(self, prefix):
        target = self._path(prefix)
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
        return True
