"""Where shardtrain keeps things by default: ``$SHARDTRAIN_HOME`` (``~/.shardtrain``)."""

from __future__ import annotations

from pathlib import Path

from shardtrain import env


def shardtrain_home() -> Path:
    """The embedded default's root folder (stage, registry, demo data, the local cluster)."""
    return Path(env.HOME.get() or Path.home() / ".shardtrain")
