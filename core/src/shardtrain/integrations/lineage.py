"""Lineage names: what a training run read and wrote, named the way OpenLineage names datasets,
so that both wrappers' lineage (OpenLineage events, asset keys) call one table or one model alike.

Naming (https://openlineage.io/docs/spec/naming):

==============================  =============================  ==============================
data or location                namespace                      name
==============================  =============================  ==============================
Snowflake table (or a query's)  ``snowflake://<account>``      ``DB.SCHEMA.TABLE``
Snowflake stage location        ``snowflake://<account>``      ``DB.SCHEMA.STAGE/model/<id>``
``s3://bucket/key`` (gs, abfs)  ``s3://bucket``                ``key``
local path, ``file:///path``    ``file``                       ``/absolute/path``
MLflow registry entry           tracking URI (no credentials)  ``<model name>/<version>``
Snowflake registry entry        ``snowflake://<account>``      ``DB.SCHEMA.MODEL/<version>``
==============================  =============================  ==============================

Without a known account the namespace is ``snowflake``. Nothing here imports an orchestrator
or OpenLineage: the wrappers turn these names into their own objects. No name or fact holds
a credential (URLs are redacted, secret-named parameters dropped).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shardtrain.errors import redact_url
from shardtrain.integrations.spec import DataSpec, TrainingSpec, is_snowflake_stage
from shardtrain.secrets import redact
from shardtrain.stage import default_stage_uri
from shardtrain.stage.base import join
from shardtrain.stage.snowflake import parse_stage_uri

#: Object-store schemes OpenLineage spells one way only.
SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}
#: Azure schemes whose ``container@account`` is the location, not credentials.
CONTAINER_SCHEMES = frozenset({"abfs", "abfss", "wasb", "wasbs", "az"})
#: Characters orchestrators refuse in an asset key, replaced by "_".
ASSET_KEY_RESTRICTED = " \t\r\n\0#?&%\"'<>[]{}|\\^`"
ASSET_KEY_MAX = 512
#: Clouds in a legacy Snowflake account locator (``xy12345.us-east-1.aws``).
SNOWFLAKE_CLOUDS = ("aws", "gcp", "azure")
SNOWFLAKE_DEFAULT_REGION = ("us-west-1", "aws")

_IDENT = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
_IDENT_PART = re.compile(_IDENT)
_CHAIN = rf"{_IDENT}(?:\s*\.\s*{_IDENT}){{0,2}}"
_SOURCE = re.compile(rf"\b(?:FROM|JOIN)\s+(?>({_CHAIN}))(?!\s*[(.])", re.IGNORECASE)
_CTE = re.compile(rf"(?:\bWITH(?:\s+RECURSIVE)?|,)\s*({_IDENT})\s+AS\s*\(", re.IGNORECASE)
_NOISE = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'", re.DOTALL)


@dataclass(frozen=True)
class LineageDataset:
    """A dataset as OpenLineage names it: ``namespace`` (where) and ``name`` (what there)."""

    namespace: str
    name: str

    @property
    def asset_key(self) -> str:
        """The dataset as one URI (``s3://bucket/key``, ``file:///path``,
        ``snowflake://account/DB.SCHEMA.TABLE``): a valid asset key."""
        scheme, sep, authority = self.namespace.partition("://")
        scheme = re.sub(r"[^a-z0-9]", "", scheme.lower()) or "data"
        if sep:  # s3://bucket + key, file://host + /path, sqlite:////x.db + name/1
            key = f"{scheme}://{authority.rstrip('/')}/{self.name.lstrip('/')}"
        else:  # file + /path, snowflake + DB.SCHEMA.TABLE
            key = f"{scheme}://{self.name}"
        key = key.replace('"', "")
        key = "".join("_" if c in ASSET_KEY_RESTRICTED else c for c in key)
        if len(key) > ASSET_KEY_MAX:  # still unique: a digest of the whole key ends it
            digest = hashlib.sha256(key.encode()).hexdigest()[:16]
            key = f"{key[: ASSET_KEY_MAX - 17]}-{digest}"
        return key


@dataclass(frozen=True)
class SnowflakeContext:
    """What names a Snowflake object fully: the account, and the database and schema that
    unqualified names resolve in (a connection's defaults). Any may be unknown."""

    account: str | None = None
    database: str | None = None
    schema: str | None = None

    @property
    def namespace(self) -> str:
        return f"snowflake://{snowflake_authority(self.account)}" if self.account else "snowflake"

    def qualify(self, name: str) -> str:
        """``DB.SCHEMA.NAME`` in Snowflake's case (unquoted identifiers upper case), with the
        defaults filling what ``name`` leaves out."""
        parts = identifier_parts(name)
        if len(parts) == 1 and self.schema:
            parts.insert(0, normalize_identifier(self.schema))
        if len(parts) == 2 and self.database:
            parts.insert(0, normalize_identifier(self.database))
        return ".".join(parts)


@dataclass(frozen=True)
class InputLineage:
    """One data set a run read: its role (``train``, ``eval`` or a dataset_map name), the
    datasets it names (a query may name several tables) and the columns used."""

    role: str
    datasets: tuple[LineageDataset, ...]
    columns: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True)
class TrainingLineage:
    """A training run's lineage: data in, model out, and what to say about the model."""

    inputs: tuple[InputLineage, ...]
    model: LineageDataset
    facts: Mapping[str, Any] = field(default_factory=dict)


def snowflake_authority(account: str) -> str:
    """A Snowflake account identifier as OpenLineage's namespace has it: ``org-account``
    unchanged, a legacy locator as ``locator.region.cloud`` (AWS us-west-1 when left out),
    as the Snowflake OpenLineage integrations write it."""
    name = account.strip().lower()
    name = re.sub(r"\.snowflakecomputing\.com$", "", name)
    if not any(c in name for c in "-_"):
        return f"{name}.{'.'.join(SNOWFLAKE_DEFAULT_REGION)}"
    if "." in name:
        locator, *rest = name.split(".")
        region = rest[0] if rest else SNOWFLAKE_DEFAULT_REGION[0]
        cloud = rest[1] if len(rest) > 1 else SNOWFLAKE_DEFAULT_REGION[1]
        return f"{locator}.{region}.{cloud}"
    cloud = next((c for c in SNOWFLAKE_CLOUDS if c in name), "")
    if cloud:
        locator, _, region = name.partition(cloud)
        region = region.strip("-_.").replace("_", "-")
        return f"{locator.strip('-_.')}.{region}.{cloud}" if region else name
    return name


def normalize_identifier(part: str) -> str:
    """Snowflake's case rule: an unquoted identifier is upper case, a quoted one exact."""
    part = part.strip()
    if len(part) > 1 and part.startswith('"') and part.endswith('"'):
        return part[1:-1].replace('""', '"')
    return part.upper()


def identifier_parts(name: str) -> list[str]:
    """``db.schema."My Table"`` as ``['DB', 'SCHEMA', 'My Table']``."""
    return [normalize_identifier(m.group(0)) for m in _IDENT_PART.finditer(name)]


def query_tables(sql: str) -> list[str]:
    """The tables a SELECT reads (after FROM and JOIN; CTE names and table functions left
    out), in order, each once. A plain reading, not a SQL parser: a wrapper
    with OpenLineage's parser installed uses that."""
    text = _NOISE.sub(" ", sql)
    ctes = {normalize_identifier(m.group(1)) for m in _CTE.finditer(text)}
    found: list[str] = []
    for match in _SOURCE.finditer(text):
        name = re.sub(r"\s*\.\s*", ".", match.group(1))
        if len(identifier_parts(name)) == 1 and normalize_identifier(name) in ctes:
            continue
        if name not in found:
            found.append(name)
    return found


def path_dataset(location: str) -> LineageDataset:
    """A Parquet path or URL (or a stage folder that is one) as a dataset."""
    location = location.strip()
    scheme = location.split("://", 1)[0].lower() if "://" in location else ""
    container = re.match(r"^[^:/]+://([A-Za-z0-9-]+@)", location)
    if not (scheme in CONTAINER_SCHEMES and container):  # a container is no secret
        location = redact_url(location)
    if "://" not in location:
        return LineageDataset("file", os.path.abspath(location).rstrip("/") or "/")
    scheme, rest = location.split("://", 1)
    scheme = SCHEME_ALIASES.get(scheme.lower(), scheme.lower())
    authority, _, path = rest.partition("/")
    if scheme == "file":
        if authority in ("", "localhost"):
            return LineageDataset("file", "/" + path.rstrip("/"))
        return LineageDataset(f"file://{authority}", "/" + path.rstrip("/"))
    return LineageDataset(f"{scheme}://{authority}", path.strip("/") or "/")


def stage_dataset(uri: str, snowflake: SnowflakeContext | None = None) -> LineageDataset:
    """A stage location (or a file under it) as a dataset: Snowflake stages under the
    account, anything else by its path."""
    parsed = parse_stage_uri(uri.strip()) if is_snowflake_stage(uri) else None
    if parsed is None:
        return path_dataset(uri)
    snowflake = snowflake or SnowflakeContext()
    stage, prefix = parsed
    stage = stage[1:]  # no '@'
    if not stage.startswith(("~", "%")):
        stage = snowflake.qualify(stage)
    return LineageDataset(snowflake.namespace, join(stage, prefix))


def data_datasets(
    data: DataSpec,
    snowflake: SnowflakeContext | None = None,
    tables_of: Callable[[str], list[str]] | None = None,
) -> tuple[LineageDataset, ...]:
    """The datasets a data spec reads: a path's location, a table, or a query's tables
    (found by ``tables_of``, default ``query_tables``)."""
    snowflake = snowflake or SnowflakeContext()
    if data.kind == "path":
        return (path_dataset(data.value),)
    tables = [data.value] if data.kind == "table" else (tables_of or query_tables)(data.value)
    return tuple(LineageDataset(snowflake.namespace, snowflake.qualify(t)) for t in tables)


def model_location(spec: TrainingSpec) -> str:
    """Where the run's model is published (what ``ModelArtifact.uri`` will say), known
    before it trains: the stage, then ``model/<request id>``."""
    stage = (spec.artifact_stage_location or default_stage_uri()).strip()
    if stage.startswith("file://"):
        stage = stage[len("file://") :]
    return join(redact_url(stage).rstrip("/"), "model", spec.request_id)


def safe_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters fit to show anywhere: secret-named keys dropped, every value's credentials
    (a URL's user info, tokens, keys) masked, by ``shardtrain.secrets``' one rule."""
    return {str(key): value for key, value in redact(dict(params), drop=True).items()}


def model_facts(artifact: Any = None, spec: TrainingSpec | None = None) -> dict[str, Any]:
    """What lineage says about a model: framework, params, final metrics, request id (from
    the published ``ModelArtifact`` when there is one, else from the spec)."""
    if artifact is not None:
        return {
            "framework": artifact.framework,
            "requestId": artifact.request_id,
            "params": safe_params(artifact.params),
            "metrics": {s: dict(m) for s, m in artifact.metrics.items()},
            "numRows": dict(artifact.num_rows),
            "createdAt": artifact.created_at,
        }
    if spec is None:
        return {}
    params = spec.hyper_params if spec.framework == "pytorch" else spec.params
    return {
        "framework": spec.framework,
        "requestId": spec.request_id,
        "params": safe_params(params),
    }


def training_lineage(
    spec: TrainingSpec,
    artifact: Any = None,
    *,
    snowflake: SnowflakeContext | None = None,
    tables_of: Callable[[str], list[str]] | None = None,
) -> TrainingLineage:
    """A run's lineage from its spec (and its ``ModelArtifact`` once published): every data
    set it names, with the columns used (features and label, typed where the artifact knows),
    and the model's location with its facts."""
    columns: tuple[tuple[str, str | None], ...] = ()
    if spec.input_cols:
        types = dict(getattr(artifact, "input_types", None) or {})
        names = [*spec.input_cols, *([spec.label_col] if spec.label_col else [])]
        columns = tuple((c, types.get(c)) for c in names)
    inputs = tuple(
        InputLineage(role, data_datasets(data, snowflake, tables_of), columns)
        for role, data in spec.data.items()
    )
    uri = artifact.uri if artifact is not None else model_location(spec)
    return TrainingLineage(inputs, stage_dataset(uri, snowflake), model_facts(artifact, spec))


def registry_dataset(
    registry: str | None,
    name: str,
    version: str,
    snowflake: SnowflakeContext | None = None,
) -> LineageDataset:
    """A registered model version: under the MLflow tracking URI (credentials redacted; the
    embedded sqlite registry's when ``registry`` is None or ``"mlflow"``) or the Snowflake
    account's registry."""
    if registry == "snowflake":
        snowflake = snowflake or SnowflakeContext()
        return LineageDataset(snowflake.namespace, f"{snowflake.qualify(name)}/{version}")
    if registry in (None, "mlflow"):
        from shardtrain.model.registry import default_mlflow_uri

        registry = default_mlflow_uri()
    return LineageDataset(redact_url(registry).rstrip("/"), f"{name}/{version}")


__all__ = [
    "InputLineage",
    "LineageDataset",
    "SnowflakeContext",
    "TrainingLineage",
    "data_datasets",
    "identifier_parts",
    "model_facts",
    "model_location",
    "path_dataset",
    "query_tables",
    "registry_dataset",
    "safe_params",
    "snowflake_authority",
    "stage_dataset",
    "training_lineage",
]
