"""``run_training``: run a ``TrainingSpec`` and hand back the published ``ModelArtifact``.

This is the whole of a training run as an orchestrator or a Ray Job sees it: build the
estimator or distributor, read the data, fit, publish, return where the model went.

Ray: the caller connects first (``shardtrain.runtime.cluster.connect`` with its cluster's
address, namespace and runtime env). A caller that has not connected gets the default the fit
itself uses: ``RAY_ADDRESS``, else a local Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shardtrain.data import DataConnector
from shardtrain.errors import ConfigError
from shardtrain.integrations.build import build_distributor, build_estimator
from shardtrain.integrations.data import connector_from_spec
from shardtrain.integrations.sessions import close_session, session_from_connection
from shardtrain.integrations.spec import TrainingSpec
from shardtrain.model.artifact import ModelArtifact


def _connectors(
    spec: TrainingSpec,
    data: Mapping[str, DataConnector] | None,
    session: Any,
    storage_options: dict[str, Any] | None,
) -> dict[str, DataConnector]:
    given = dict(data or {})
    names = set(spec.data) | set(given)
    if spec.framework != "pytorch":
        unknown = sorted(names - {"train", "eval"})
        if unknown:
            raise ConfigError(
                f"a {spec.framework} run reads data named 'train' and 'eval', not {unknown}."
            )
    out = {}
    for name in sorted(names):
        if name in given:
            out[name] = given[name]
        else:
            label = name if spec.framework == "pytorch" else {"train": "training"}.get(name, name)
            connector = connector_from_spec(
                spec.data[name], session=session, storage_options=storage_options, name=label
            )
            assert connector is not None  # spec.data holds DataSpecs only: each reads as one
            out[name] = connector
    return out


def run_training(
    spec: TrainingSpec,
    *,
    session: Any = None,
    storage_options: dict[str, Any] | None = None,
    train_func: Callable | None = None,
    data: Mapping[str, DataConnector] | None = None,
    data_session: Any = None,
) -> ModelArtifact | None:
    """Run ``spec``; return the published model's artifact (None only for a pytorch run
    whose train_func saved no model).

    Args:
        spec: what to train, on what data, published where.
        session: the Snowpark session for Snowflake stages, tables and queries. When None and
            the spec needs one, it is opened from ``spec.snowflake_connection`` and closed
            before returning.
        storage_options: fsspec options (credentials, endpoint) for Parquet URLs and fsspec
            stages; never stored anywhere.
        train_func: a callable held in process; overrides ``spec.train_func``.
        data: DataConnectors held in process, by the spec's data names (``train``/``eval``,
            or dataset_map names); they override the spec's entries of the same name.
        data_session: the session tables and queries are read through, when it is not the
            stage's (default: ``session``).
    """
    if not isinstance(spec, TrainingSpec):
        raise ConfigError(f"run_training takes a TrainingSpec, got {type(spec).__name__}.")
    if spec.framework != "pytorch" and spec.train_data is None and "train" not in (data or {}):
        spec.check_complete()
    if spec.framework == "pytorch" and train_func is None:
        spec.check_complete()
    opened = None
    try:
        if session is None and spec.snowflake_connection and spec.needs_session:
            session = opened = session_from_connection(spec.snowflake_connection)
        connectors = _connectors(
            spec, data, data_session if data_session is not None else session, storage_options
        )
        common = dict(
            artifact_stage_location=spec.artifact_stage_location,
            request_id=spec.request_id,
            session=session,
            storage_options=storage_options,
        )
        if spec.framework == "pytorch":
            result = build_distributor(spec, train_func).run(
                dataset_map=connectors, hyper_params=dict(spec.hyper_params), **common
            )
            return result.get_artifact()
        estimator = build_estimator(spec)
        estimator.fit(
            connectors["train"],
            list(spec.input_cols),
            spec.label_col,
            eval_set=connectors.get("eval"),
            verbose_eval=spec.verbose_eval,
            **common,
        )
        return estimator.get_artifact()
    finally:
        close_session(opened)
