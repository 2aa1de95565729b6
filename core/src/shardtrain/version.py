"""The package version, single-sourced from the installed distribution's metadata
(``core/pyproject.toml``); a source tree that is not installed reports ``0+unknown``."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("shardtrain")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
