"""Registering a published model in a model registry, downstream of training.

``register_model`` verifies the artifact first (manifest present, checksums match), then logs
the model with its native flavour into MLflow (the embedded default: a sqlite registry under
``$SHARDTRAIN_HOME/mlflow``) or the Snowflake Model Registry. Registering the same artifact
(same request_id) under one name again returns the existing version: task retries are
idempotent. Processes registering into one sqlite registry take turns (a file lock): MLflow
creates and migrates a new database on first use, which is not safe to do twice at once.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import socket
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shardtrain.errors import ConfigError, redact_url
from shardtrain.home import shardtrain_home
from shardtrain.model.artifact import ModelArtifact
from shardtrain.model.frameworks import require_module, spec
from shardtrain.model.load import fetch_model, load_model

REQUEST_ID_TAG = "shardtrain.request_id"
SOURCE_TAG = "shardtrain.source_uri"


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model version: JSON-safe, like ``ModelArtifact``."""

    registry: str
    name: str
    version: str
    model_uri: str
    source_uri: str
    request_id: str
    created: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegisteredModel:
        return cls(**data)


def default_mlflow_uri() -> str:
    folder = shardtrain_home() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def registry_libraries(registry: str | None) -> tuple[str, ...]:
    """The libraries whose log lines a registration in ``registry`` emits (MLflow's for an
    MLflow registry, none for Snowflake's): what an orchestrator routes to its task log."""
    return () if registry == "snowflake" else ("mlflow",)


def register_model(
    artifact_or_uri: ModelArtifact | dict | str,
    *,
    name: str,
    registry: str | None = None,
    version: str | None = None,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    session: Any = None,
    storage_options: dict | None = None,
    module: Any = None,
) -> RegisteredModel:
    """Register a published model as a new version of ``name``.

    Args:
        artifact_or_uri: the ``ModelArtifact`` (or its dict, or the model's URI).
        name: the registered model's name.
        registry: None or ``"mlflow"`` (the embedded sqlite registry), an MLflow tracking
            URI, or ``"snowflake"`` (needs ``session``).
        version: a version name (Snowflake's ``version_name``; an MLflow tag).
        metrics, tags: extra metrics and tags (the artifact's final metrics are logged too).
        session, storage_options: how to reach the artifact's stage (and Snowflake).
        module: for PyTorch, the ``torch.nn.Module`` (an instance) the state dict loads into.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"name must be a non-empty string, got {name!r}.")
    if any(c in name for c in "'\"`\\"):  # MLflow's search filters cannot quote them
        raise ConfigError(f"model name {name!r} contains a quote or backslash; leave them out.")
    if registry != "snowflake":
        require_module("mlflow", "registering a model in MLflow")
        _probe_tracking_server(registry)
    # Verify first: manifest present, every file matching its checksum.
    artifact = _verified(artifact_or_uri, session, storage_options)
    model = load_model(artifact, session=session, storage_options=storage_options)
    if spec(artifact.framework).needs_module:
        if module is None:
            raise ConfigError(
                f"a {artifact.framework} artifact holds a state dict: pass module=<an "
                "instance of its torch.nn.Module> to register it."
            )
        module.load_state_dict(model)
        model = module.eval()
    all_metrics = {f"{s}_{m}": v for s, ms in artifact.metrics.items() for m, v in ms.items()}
    all_metrics.update(metrics or {})
    if registry == "snowflake":
        return _register_snowflake(artifact, model, name, version, all_metrics, session)
    uri = default_mlflow_uri() if registry in (None, "mlflow") else registry
    with _sqlite_lock(uri):
        return _register_mlflow(artifact, model, name, uri, version, all_metrics, dict(tags or {}))


#: Seconds to wait for a TCP connection to an MLflow tracking server before giving up (MLflow's
#: own client retries an unreachable server for minutes).
MLFLOW_PROBE_TIMEOUT_S = 5.0


def _probe_tracking_server(registry: str | None) -> None:
    """ConfigError within seconds when an http(s) tracking server does not answer."""
    if not registry or not registry.startswith(("http://", "https://")):
        return
    url = urllib.parse.urlsplit(registry)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=MLFLOW_PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the MLflow tracking server at {redact_url(registry)} ({exc}). Check "
            "that it is up and the URL and port are right, or leave registry unset for the "
            "embedded registry.",
            registry=redact_url(registry),
        ) from exc


@contextlib.contextmanager
def _sqlite_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside a sqlite registry's file, held for a whole registration: the
    first use creates and migrates the database (two at once fail with 'duplicate column'),
    and the lookup-then-create of the experiment and the version must not interleave either.
    A tracking server serialises for itself: no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock_path = Path(uri[len("sqlite:///") :]).resolve().with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _verified(artifact_or_uri, session, storage_options) -> ModelArtifact:
    with tempfile.TemporaryDirectory(prefix="shardtrain-verify-") as tmp:
        return fetch_model(artifact_or_uri, tmp, session=session, storage_options=storage_options)


# -- MLflow -----------------------------------------------------------------------------------------

_MLFLOW_TYPES = {
    "float": "float",
    "double": "double",
    "int64": "long",
    "int32": "integer",
    "int16": "integer",
    "int8": "integer",
    "bool": "boolean",
    "uint8": "integer",
}


def _signature(artifact: ModelArtifact):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    if not spec(artifact.framework).tabular:
        if not artifact.input_cols:
            return None
        return ModelSignature(
            inputs=Schema([TensorSpec(np.dtype("float32"), (-1, len(artifact.input_cols)))])
        )
    columns = [
        ColSpec(_MLFLOW_TYPES.get(artifact.input_types.get(c, "double"), "double"), c)
        for c in artifact.input_cols
    ]
    return ModelSignature(inputs=Schema(columns)) if columns else None


def _register_mlflow(artifact, model, name, uri, version, metrics, tags) -> RegisteredModel:
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    existing = client.search_model_versions(
        f"name = '{name}' and tags.`{REQUEST_ID_TAG}` = '{artifact.request_id}'"
    )
    if existing:
        found = existing[0]
        return RegisteredModel(
            "mlflow",
            name,
            str(found.version),
            f"models:/{name}/{found.version}",
            artifact.uri,
            artifact.request_id,
            created=False,
        )
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = client.get_experiment_by_name("shardtrain")
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment("shardtrain", artifact_location=_artifact_location(uri))
    )
    mlflow.set_experiment(experiment_id=experiment_id)
    framework = spec(artifact.framework)
    flavour = importlib.import_module(framework.mlflow_flavour)
    version_tags = {
        REQUEST_ID_TAG: artifact.request_id,
        SOURCE_TAG: artifact.uri,
        "shardtrain.framework": artifact.framework,
        **tags,
    }
    if version:
        version_tags["shardtrain.version_name"] = version
    with mlflow.start_run(run_name=artifact.request_id):
        mlflow.log_params({k: str(v)[:500] for k, v in artifact.params.items()})
        if metrics:
            mlflow.log_metrics({_metric_key(k): float(v) for k, v in metrics.items()})
        mlflow.set_tags(version_tags)
        info = flavour.log_model(
            model,
            name="model",
            signature=_signature(artifact),
            pip_requirements=_pip_requirements(framework.module),
            **framework.mlflow_options,
        )
    registered = mlflow.register_model(info.model_uri, name, tags=version_tags)
    return RegisteredModel(
        "mlflow",
        name,
        str(registered.version),
        f"models:/{name}/{registered.version}",
        artifact.uri,
        artifact.request_id,
    )


def _pip_requirements(module: str) -> list[str] | None:
    """The installed distribution of the framework, pinned (``xgboost-cpu`` where that is what
    provides ``xgboost``). Given explicitly, MLflow skips inferring requirements, which loads
    the model again in a subprocess (seconds per registration). None: MLflow's default."""
    from importlib import metadata

    for dist in metadata.packages_distributions().get(module, []):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return [f"{dist}=={metadata.version(dist)}"]
    return None


def _artifact_location(uri: str) -> str | None:
    """Beside a sqlite registry's file (MLflow's default would be ./mlruns in the current
    directory); a tracking server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).resolve().parent / "mlflow-artifacts").as_uri()
    return None


def _metric_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)


# -- Snowflake Model Registry -------------------------------------------------------------------------


def _register_snowflake(artifact, model, name, version, metrics, session) -> RegisteredModel:
    """``snowflake.ml.registry.Registry(session).log_model(...)`` (needs snowflake-ml-python)."""
    if session is None:
        raise ConfigError("registry='snowflake' needs a Snowpark session (session=...).")
    from snowflake.ml.registry import Registry

    registry = Registry(session=session)
    version_name = version or "V_" + re.sub(r"[^A-Za-z0-9_]", "_", artifact.request_id).upper()
    try:
        existing = registry.get_model(name).version(version_name)
    except Exception:  # the registry raises its own not-found errors
        existing = None
    if existing is None:
        import pandas as pd

        sample = pd.DataFrame([[0.0] * len(artifact.input_cols)], columns=artifact.input_cols)
        registry.log_model(
            model,
            model_name=name,
            version_name=version_name,
            sample_input_data=sample if artifact.input_cols else None,
            metrics=metrics,
            comment=f"shardtrain {artifact.uri}",
        )
    return RegisteredModel(
        "snowflake",
        name,
        version_name,
        f"snowflake://{name}/{version_name}",
        artifact.uri,
        artifact.request_id,
        created=existing is None,
    )
