"""Prefect assets for the training and registration tasks, so that a flow's asset graph shows
table -> model -> registered model.

What a task reads and writes is known only from its arguments, so the tasks declare their
assets on the running task's ``AssetContext`` (what ``@materialize`` and ``asset_deps`` fill
in before a task starts): the data as direct upstream assets, the model's location (known
before training: the stage, then ``model/<request id>``) as the materialised asset. Prefect
then emits ``prefect.asset.materialization.succeeded`` (or ``.failed``) with the upstream
assets related, and hands the model asset on to the tasks that take the result (the
registration task). Asset keys are the OpenLineage names of ``shardtrain.integrations.lineage``
as URIs, the same names the Airflow provider reports. Outside a task run nothing happens.
"""

from __future__ import annotations

from typing import Any

from prefect.assets import Asset, AssetProperties
from prefect.context import AssetContext

from shardtrain.integrations import TrainingSpec
from shardtrain.integrations.lineage import (
    LineageDataset,
    SnowflakeContext,
    model_facts,
    registry_dataset,
    stage_dataset,
    training_lineage,
)

#: The tool named as what materialised the assets (``asset-materialized-by``).
MATERIALIZED_BY = "shardtrain"


def snowflake_context(block: Any) -> SnowflakeContext:
    """Account, database and schema from a prefect-snowflake block (a ``SnowflakeConnector``
    or ``SnowflakeCredentials``), or nothing known without one."""
    if block is None:
        return SnowflakeContext()
    credentials = getattr(block, "credentials", block)
    return SnowflakeContext(
        getattr(credentials, "account", None) or None,
        getattr(block, "database", None) or None,
        getattr(block, "schema_", None) or None,
    )


def asset(named: LineageDataset) -> Asset:
    """The dataset as a Prefect asset (the same properties wherever it appears, so the
    asset a training task materialises and the one a registration reads are equal)."""
    return Asset(key=named.asset_key, properties=AssetProperties(name=named.name))


def _materialising(context: AssetContext, made: Asset, reads: list[Asset]) -> None:
    context.direct_asset_dependencies.update(reads)
    context.downstream_assets.add(made)
    context.materialized_by = MATERIALIZED_BY
    context.update_tracked_assets()  # downstream tasks inherit what this one makes


def declare_training(spec: TrainingSpec, snowflake_block: Any = None) -> None:
    """Before training: the data the spec names are upstream assets, the model's location
    the materialised one, with what is known already (framework, params, request id)."""
    context = AssetContext.get()
    if context is None:
        return
    lineage = training_lineage(spec, snowflake=snowflake_context(snowflake_block))
    model = asset(lineage.model)
    _materialising(context, model, [asset(d) for i in lineage.inputs for d in i.datasets])
    context.add_asset_metadata(model.key, dict(lineage.facts))


def record_model(artifact: Any) -> None:
    """After publishing: the model asset's metadata gains the final metrics."""
    context = AssetContext.get()
    if context is None:
        return
    facts = model_facts(artifact)
    for key, metadata in list(context.materialization_metadata.items()):
        if metadata.get("requestId") == artifact.request_id:
            context.add_asset_metadata(key, facts)


def declare_registration(registered: Any, registry: str | None, snowflake_block: Any) -> None:
    """After registering: the model's location in, the registry entry materialised."""
    context = AssetContext.get()
    if context is None:
        return
    snowflake = snowflake_context(snowflake_block)
    entry = asset(registry_dataset(registry, registered.name, registered.version, snowflake))
    _materialising(context, entry, [asset(stage_dataset(registered.source_uri, snowflake))])
    context.add_asset_metadata(
        entry.key,
        {
            "registry": registered.registry,
            "name": registered.name,
            "version": registered.version,
            "modelUri": registered.model_uri,
            "sourceUri": registered.source_uri,
            "requestId": registered.request_id,
            "created": registered.created,
        },
    )
