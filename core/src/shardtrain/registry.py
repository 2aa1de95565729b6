"""Deprecated alias of ``shardtrain.model.registry`` (the path the first README documented).

Kept so that code written against that README keeps importing; it warns once, on import,
and goes no earlier than the release after next (see CHANGELOG.md, "Deprecation policy").
"""

from __future__ import annotations

import warnings

from shardtrain.model.registry import (
    REQUEST_ID_TAG,
    SOURCE_TAG,
    RegisteredModel,
    default_mlflow_uri,
    register_model,
)

warnings.warn(
    "shardtrain.registry is deprecated and will be removed in shardtrain 0.3: import "
    "register_model from shardtrain.model.registry.",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "REQUEST_ID_TAG",
    "SOURCE_TAG",
    "RegisteredModel",
    "default_mlflow_uri",
    "register_model",
]
