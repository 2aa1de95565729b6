"""Prefect task for hyperparameter tuning: a Ray Tune search from one task.

Why a task and not ``.map()`` over configurations: a mapped task run per trial costs a task
run, a Ray connection and a result each, and a search algorithm that learns from earlier
trials cannot run across them. Here the trials are Ray Tune trials inside one Prefect task.
The result is the best model's ``ModelArtifact`` dict plus ``trials`` (the trial table's
rows), ``best_result``, ``metric`` and ``mode``: ``register_model`` takes it as is. The
request id derives from the flow and task run, so a retry publishes to the same place.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from prefect_shardtrain.blocks import ModelStage, RayCluster
from prefect_shardtrain.library_logs import library_logs
from prefect_shardtrain.tasks import forwarded_logs, publish_artifacts, request_id
from shardtrain import ModelArtifact
from shardtrain.integrations import DataSpec, connector_from_spec, resolve_callable
from shardtrain.modeling.tune import Tuner, TunerConfig
from shardtrain.modeling.tune.search import search_algorithm


def _reads_snowflake(dataset_map: dict[str, Any]) -> bool:
    for name, data in dataset_map.items():
        if isinstance(data, str | dict):
            parsed = DataSpec.parse(data, name=name)
            if parsed is not None and parsed.needs_session:
                return True
    return False


@task(name="tune_hyperparameters", retries=0)
def tune_hyperparameters(
    train_func: Any,
    search_space: dict[str, Any],
    metric: str,
    mode: str,
    search_alg: Any = None,
    num_trials: int = 5,
    max_concurrent_trials: int | None = None,
    resource_per_trial: dict[str, Any] | None = None,
    dataset_map: dict[str, Any] | None = None,
    ray_cluster: RayCluster | None = None,
    stage: ModelStage | None = None,
) -> dict[str, Any]:
    """Run ``Tuner(train_func, search_space, TunerConfig(...))`` on Ray; returns the best
    model's artifact dict plus the trial table (``trials``) and ``best_result``.

    ``search_alg``: 'random' (default), 'grid', 'bayesopt' or a search object.
    ``dataset_map``: name -> a Parquet path/URL, ``{"table"|"query": ...}`` (read with the
    stage's Snowflake credentials) or a DataConnector.
    """
    stage = stage or ModelStage()
    dataset_map = dataset_map or {}
    tuner = Tuner(  # checked before Ray or Snowflake are touched
        resolve_callable(train_func, "train_func"),
        search_space,
        TunerConfig(
            metric=metric,
            mode=mode,
            search_alg=search_algorithm(search_alg),
            num_trials=num_trials,
            max_concurrent_trials=max_concurrent_trials,
            resource_per_trial=resource_per_trial,
        ),
    )
    with contextlib.ExitStack() as opened:
        opened.enter_context(library_logs("ray"))
        (ray_cluster or RayCluster()).connect()
        needs_session = stage.needs_session or _reads_snowflake(dataset_map)
        session = opened.enter_context(stage.open_session()) if needs_session else None
        datasets = {  # specs are read here; connectors and in-memory tables pass as they are
            name: connector_from_spec(
                data, session=session, storage_options=stage.options(), name=name
            )
            if isinstance(data, str | dict)
            else data
            for name, data in dataset_map.items()
        }
        with forwarded_logs():
            results = tuner.run(
                dataset_map=datasets or None,
                artifact_stage_location=stage.uri,
                request_id=request_id(),
                session=session,
                storage_options=stage.options(),
            )
    payload = results.to_dict()
    create_table_artifact(
        payload["trials"], key=None, description=f"{len(payload['trials'])} tuning trials"
    )
    logger = get_run_logger()
    logger.info(
        "%d trials; best %s=%s", len(payload["trials"]), metric, payload["best_result"][metric]
    )
    if results.artifact is not None:
        logger.info("best model published to %s", results.artifact.uri)
        publish_artifacts(ModelArtifact.from_dict(payload))
    return payload


__all__ = ["tune_hyperparameters"]
