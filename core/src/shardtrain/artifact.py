"""Deprecated alias of ``shardtrain.model.artifact`` (the path the first README documented).

Kept so that code written against that README keeps importing; it warns once, on import,
and goes no earlier than the release after next (see CHANGELOG.md, "Deprecation policy").
"""

from __future__ import annotations

import warnings

from shardtrain.model.artifact import (
    FRAMEWORKS,
    ModelArtifact,
    check_request_id,
    new_request_id,
    request_id_from,
)
from shardtrain.model.load import load_model

warnings.warn(
    "shardtrain.artifact is deprecated and will be removed in shardtrain 0.3: import "
    "ModelArtifact from shardtrain (or shardtrain.model.artifact), load_model from shardtrain "
    "(or shardtrain.model.load).",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "FRAMEWORKS",
    "ModelArtifact",
    "check_request_id",
    "load_model",
    "new_request_id",
    "request_id_from",
]
