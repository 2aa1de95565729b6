"""Where shardtrain keeps things by default: ``$SHARDTRAIN_HOME`` (``~/.shardtrain``)."""

from __future__ import annotations

import os
from pathlib import Path


def shardtrain_home() -> Path:
    """The embedded default's root folder (stage, registry, demo data)."""
    return Path(os.environ.get("SHARDTRAIN_HOME") or Path.home() / ".shardtrain")
