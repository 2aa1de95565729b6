"""ModelArtifact: the JSON-safe record of a published model, passed between tasks.

It is what an Airflow operator pushes to XCom and a Prefect task returns: where the model is,
what it is, how well it did, and what it was trained on; never credentials: its ``params``
and ``source`` are redacted on construction (``shardtrain.secrets``), so the manifest written
from it, the lineage and the registry that read it never hold one either.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from shardtrain.errors import ConfigError
from shardtrain.model.frameworks import FRAMEWORKS, spec
from shardtrain.secrets import redact

_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def new_request_id() -> str:
    """A unique, time-sortable id: UTC timestamp to the microsecond, then 32 random bits."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(4)}"


def request_id_from(identity: str, *, unique: str | None = None, prefix: str = "") -> str:
    """A request id from an orchestrator's identity of a task (the same for every retry):
    the identity made path-safe, plus a hash of ``unique`` (default: the identity itself) so
    that identities differing only in unsafe characters never collide."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", identity).strip("-.")[:150] or "run"
    digest = hashlib.sha256((unique or identity).encode()).hexdigest()[:12]
    return check_request_id(f"{prefix}{safe}-{digest}")


def check_request_id(request_id: str) -> str:
    if (
        not isinstance(request_id, str)
        or not _REQUEST_ID.fullmatch(request_id)  # match()'s '$' passes a trailing newline
        or ".." in request_id
    ):
        raise ConfigError(
            f"request_id {request_id!r} cannot name a folder: use 1-200 letters, digits, '.', "
            "'_' or '-', starting with a letter or digit.",
            request_id=request_id,
        )
    return request_id


@dataclass(frozen=True)
class ModelArtifact:
    """A published model: its location, what it is, and how it was made.

    Example:
        >>> a = ModelArtifact(uri="/tmp/stage/model/r1", framework="xgboost", request_id="r1")
        >>> ModelArtifact.from_dict(json.loads(json.dumps(a.to_dict()))) == a
        True
    """

    uri: str
    framework: str
    request_id: str
    model_file: str | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    input_cols: list[str] = field(default_factory=list)
    input_types: dict[str, str] = field(default_factory=dict)
    label_col: str | None = None
    num_rows: dict[str, int] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    files: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    curves: str | None = None  # the training-curve image's URI (shardtrain.model.curves)

    def __post_init__(self) -> None:
        spec(self.framework)  # refuses an unknown framework
        check_request_id(self.request_id)
        # A train function may take a token in its hyper-parameters in process; the record
        # of the model, which is written and shown everywhere, says only that it was there.
        for name in ("params", "source"):
            object.__setattr__(self, name, redact(getattr(self, name)))
        try:
            json.dumps(self.to_dict(), allow_nan=True)
        except TypeError as exc:
            raise ConfigError(f"a ModelArtifact must be JSON-safe: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (what XCom and Prefect results store)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelArtifact:
        """The inverse of ``to_dict``; unknown keys (from newer versions) are ignored."""
        if not isinstance(data, dict):
            raise ConfigError(f"a ModelArtifact is read from a dict, got {type(data).__name__}.")
        missing = [k for k in ("uri", "framework", "request_id") if k not in data]
        if missing:
            raise ConfigError(
                f"not a ModelArtifact: the fields {missing} are missing (it has "
                f"{sorted(data)[:20]}). Pass what publish_model or a training task returned.",
                missing=missing,
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelArtifact:
        return cls.from_dict(json.loads(text))


__all__ = ["FRAMEWORKS", "ModelArtifact", "check_request_id", "new_request_id", "request_id_from"]
