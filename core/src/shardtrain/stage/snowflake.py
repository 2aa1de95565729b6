"""A Snowflake stage through a Snowpark session's file API.

Files go up with ``put_stream(..., auto_compress=False, overwrite=True)`` and come back with
``get_stream``, so no local temp file names leak into stage paths. Listing and deleting use
``session.file.list`` / ``remove`` (LIST / REMOVE) on a live session; a ``local_testing``
session supports neither, so there listing reads the emulated stage's folder and deletion is
skipped (the model manifest is what readers follow, so stale files are never read).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from shardtrain.errors import StageError
from shardtrain.stage.base import Stage, join

_IDENT = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
#: @DB.SCHEMA.STAGE, @SCHEMA.STAGE, @STAGE, @~ and @%TABLE, each with an optional /prefix.
STAGE_AT = re.compile(rf"^@(?P<name>~|%{_IDENT}|{_IDENT}(?:\.{_IDENT}){{0,2}})(?P<prefix>/.*)?$")
#: The vendor's bare DB.SCHEMA.STAGE form (exactly three identifiers).
STAGE_BARE = re.compile(rf"^(?P<name>{_IDENT}\.{_IDENT}\.{_IDENT})(?P<prefix>/.*)?$")


def parse_stage_uri(uri: str) -> tuple[str, str] | None:
    """(``@NAME``, prefix) for a Snowflake stage location, else None."""
    match = STAGE_AT.match(uri) or STAGE_BARE.match(uri)
    if not match:
        return None
    return "@" + match.group("name"), (match.group("prefix") or "").strip("/")


class SnowflakeStage(Stage):
    def __init__(self, uri: str, session: Any) -> None:
        parsed = parse_stage_uri(uri)
        if parsed is None:
            raise StageError(
                f"{uri!r} is not a Snowflake stage location; expected @DB.SCHEMA.STAGE/prefix, "
                "@STAGE/prefix, @~/prefix or DB.SCHEMA.STAGE.",
                uri=uri,
            )
        if session is None:
            raise StageError(
                f"the Snowflake stage {uri!r} needs a Snowpark session: pass session=... "
                "(in Airflow, snowflake_conn_id; in Prefect, Snowflake credentials).",
                uri=uri,
            )
        self.stage_name, self.prefix = parsed
        self.session = session
        self._local_testing = type(session._conn).__name__ == "MockServerConnection"
        super().__init__(join(self.stage_name, self.prefix))

    def __reduce__(self):
        raise TypeError(
            "a SnowflakeStage holds a Snowpark session and cannot be pickled; "
            "send its uri and open it again where it is needed."
        )

    def _location(self, path: str) -> str:
        return join(self.stage_name, self.prefix, path)

    def _write(self, path, data):
        self._put(io.BytesIO(data), path)

    def _upload(self, local, path):
        with open(local, "rb") as handle:
            self._put(handle, path)

    def _put(self, stream, path: str) -> None:
        try:
            self.session.file.put_stream(
                stream, self._location(path), auto_compress=False, overwrite=True
            )
        except Exception as exc:
            raise StageError(
                f"cannot write {self._location(path)}: {exc}. Check that the stage exists and "
                "the session's role may write to it.",
                uri=self._location(path),
            ) from exc

    def _read(self, path):
        try:
            return self.session.file.get_stream(self._location(path)).read()
        except Exception as exc:
            raise StageError(
                f"cannot read {self._location(path)}: {exc}", uri=self._location(path)
            ) from exc

    def _exists(self, path):
        if self._local_testing:
            return self._emulated_file(path).is_file()
        name = self._location(path)
        return any(_strip_stage(r.name) == _strip_stage(name) for r in self._list_live(name))

    def _list(self, prefix):
        if self._local_testing:
            root = self._emulated_file("")
            target = root.joinpath(*prefix.split("/")) if prefix else root
            if target.is_file():
                return [prefix]
            if not target.is_dir():
                return []
            return [p.relative_to(root).as_posix() for p in target.rglob("*") if p.is_file()]
        found = []
        for row in self._list_live(self._location(prefix)):
            # LIST names files as 'stage_name/prefix/...' (lower-cased stage name).
            relative = _strip_stage(row.name).split("/", 1)[1] if "/" in row.name else ""
            if self.prefix:
                relative = relative[len(self.prefix) + 1 :]
            if relative and (not prefix or relative == prefix or relative.startswith(prefix + "/")):
                found.append(relative)
        return found

    def _list_live(self, location: str):
        try:
            return self.session.file.list(location)
        except Exception as exc:
            raise StageError(f"cannot list {location}: {exc}", uri=location) from exc

    def _delete(self, prefix):
        if self._local_testing:
            return False
        try:
            self.session.file.remove(self._location(prefix))
        except Exception as exc:
            raise StageError(
                f"cannot remove {self._location(prefix)}: {exc}", uri=self._location(prefix)
            ) from exc
        return True

    def _emulated_file(self, path: str) -> Path:
        """Where a local_testing session keeps a stage file (its registry's folder)."""
        from snowflake.snowpark.mock._stage_registry import extract_stage_name_and_prefix

        name, prefix = extract_stage_name_and_prefix(self._location(path))
        folder = Path(self.session._conn.stage_registry[name]._working_directory)
        return folder.joinpath(*[p for p in prefix.split("/") if p])


def _strip_stage(name: str) -> str:
    return name.lstrip("@").lower()
