"""The Stage interface: a flat namespace of files under one root URI.

Subclasses implement the six ``_`` primitives on normalised paths; everything else (path
safety, directory uploads, error wording) lives here once.
"""

from __future__ import annotations

import builtins
import os
from abc import ABC, abstractmethod
from pathlib import Path

from shardtrain.errors import StageError


def normalize_path(path: str, *, allow_empty: bool = False) -> str:
    """A stage-relative path with '/' separators; refuses anything that could escape the root.

    ``..``, ``.``, absolute paths, backslashes and empty segments (``a//b``) are refused; a
    trailing '/' is dropped (prefixes may be given as folders).
    """
    if not isinstance(path, str):
        raise StageError(f"stage paths are strings, got {type(path).__name__}.", path=path)
    stripped = path[:-1] if path.endswith("/") else path
    if stripped == "":
        if allow_empty:
            return ""
        raise StageError("an empty path names no file on a stage.", path=path)
    problem = None
    if stripped.startswith("/"):
        problem = "it is absolute"
    elif "\\" in stripped:
        problem = "it contains a backslash"
    else:
        for part in stripped.split("/"):
            if part in ("", ".", ".."):
                problem = f"it has a {part!r} segment" if part else "it has an empty segment"
                break
    if problem:
        raise StageError(
            f"unsafe stage path {path!r}: {problem}. Use a relative path such as "
            "'model/abc/model.ubj'.",
            path=path,
        )
    return stripped


def local_files(root: str | os.PathLike) -> list[Path]:
    """The files under a local folder, sorted, for uploading: a symbolic link is followed only
    when it stays inside the folder (a link to a file elsewhere would publish that file)."""
    root = Path(root)
    real_root = root.resolve()
    files = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        for name in sorted(dirs + names):
            path = Path(folder, name)
            if not path.is_symlink():
                if name in names:
                    files.append(path)
                continue
            target = path.resolve()
            if target != real_root and real_root not in target.parents:
                raise StageError(
                    f"{path} is a link to {target}, outside {root}: only files inside the "
                    "folder are published. Copy the file into the folder instead.",
                    path=str(path),
                )
            if target.is_dir():
                raise StageError(
                    f"{path} is a link to a folder; publish real folders only (copy it).",
                    path=str(path),
                )
            if target.is_file():
                files.append(path)
    return sorted(files)


def join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


class Stage(ABC):
    """Files under a root URI: a local folder, a Snowflake stage, or an fsspec location.

    ``uri`` never contains credentials; it is what goes into model artifacts.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def child_uri(self, path: str) -> str:
        """The URI of ``path`` on this stage (what ``open_stage`` accepts back)."""
        return join(self.uri, normalize_path(path, allow_empty=True))

    # -- public operations ----------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole file; readers see the old or the new content, never a mix."""
        self._write(normalize_path(path), bytes(data))

    def read_bytes(self, path: str) -> bytes:
        path = normalize_path(path)
        if not self._exists(path):
            raise StageError(f"{self.child_uri(path)} does not exist.", path=path)
        return self._read(path)

    def exists(self, path: str) -> bool:
        return self._exists(normalize_path(path))

    def list(self, prefix: str = "") -> list[str]:
        """Every file under ``prefix`` (recursively), as sorted stage-relative paths."""
        prefix = normalize_path(prefix, allow_empty=True)
        return sorted(self._list(prefix))

    def delete(self, prefix: str) -> bool:
        """Remove the files under ``prefix``; False where the backend cannot delete."""
        return self._delete(normalize_path(prefix))

    def upload_dir(self, local_dir: str | os.PathLike, prefix: str) -> builtins.list[str]:
        """Copy every file under ``local_dir`` to ``prefix``; returns the stage paths."""
        prefix = normalize_path(prefix, allow_empty=True)
        root = Path(local_dir)
        if not root.is_dir():
            raise StageError(f"{root} is not a folder to upload.", path=str(root))
        written = []
        for file in local_files(root):
            target = join(prefix, file.relative_to(root).as_posix())
            self.upload_file(file, target)
            written.append(target)
        return written

    def upload_file(self, local: str | os.PathLike, path: str) -> None:
        """Copy one local file to ``path`` (whole: readers never see part of it)."""
        self._upload(Path(local), normalize_path(path))

    def download_file(self, path: str, local: str | os.PathLike) -> None:
        """Copy one stage file to a local path."""
        self._download(normalize_path(path), Path(local))

    def download_dir(self, prefix: str, local_dir: str | os.PathLike) -> builtins.list[Path]:
        """Copy every file under ``prefix`` into ``local_dir``, keeping relative paths."""
        prefix = normalize_path(prefix, allow_empty=True)
        files = self.list(prefix)
        if not files:
            raise StageError(f"nothing under {self.child_uri(prefix)} to download.", path=prefix)
        local = []
        for path in files:
            relative = path[len(prefix) :].lstrip("/") if prefix else path
            target = Path(local_dir, *relative.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            self._download(path, target)
            local.append(target)
        return local

    # -- primitives -------------------------------------------------------------------------
    @abstractmethod
    def _write(self, path: str, data: bytes) -> None: ...

    @abstractmethod
    def _read(self, path: str) -> bytes: ...

    @abstractmethod
    def _exists(self, path: str) -> bool: ...

    @abstractmethod
    def _list(self, prefix: str) -> builtins.list[str]: ...

    @abstractmethod
    def _delete(self, prefix: str) -> bool: ...

    def _upload(self, local: Path, path: str) -> None:
        self._write(path, local.read_bytes())

    def _download(self, path: str, local: Path) -> None:
        local.write_bytes(self._read(path))
