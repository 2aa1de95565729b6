"""OpenLineage for the operators: the training and eval data in, the published model out, and
the registry entry a registration makes from it.

The operators call ``training_lineage`` / ``registration_lineage`` from their
``get_openlineage_facets_on_complete``, which only the OpenLineage provider
(``apache-airflow-providers-openlineage``, the ``openlineage`` extra) ever calls: this module
imports it, the operators import this module lazily, so nothing changes without it.

Datasets are named by ``shardtrain.integrations.lineage`` (the OpenLineage naming spec), with
the Snowflake account, database and schema of the task's Snowflake connection, as the
Snowflake provider's own SQL operators name them, so that the table a SQL task writes and
the table a training task reads are one dataset. Facets carry no secret: URLs are redacted,
secret-named parameters dropped (``shardtrain.secrets``' one rule, applied again here to
whatever reaches a facet), and the provider masks whatever Airflow knows as secret.
"""

from __future__ import annotations

from typing import Any

import attr
from airflow.providers.common.compat.openlineage.facet import (
    Dataset,
    DatasetFacet,
    SchemaDatasetFacet,
    SchemaDatasetFacetFields,
)
from airflow.providers.openlineage.extractors import OperatorLineage

from shardtrain.integrations import TrainingSpec
from shardtrain.integrations import lineage as names
from shardtrain.integrations.lineage import (
    LineageDataset,
    SnowflakeContext,
    TrainingLineage,
    query_tables,
    registry_dataset,
    safe_params,
    stage_dataset,
)
from shardtrain.secrets import redact_text

#: Facet names (keys of a dataset's ``facets``).
MODEL_FACET = "shardtrain_model"
REGISTRY_FACET = "shardtrain_registered_model"
SCHEMA_FACET = "schema"
#: Where the custom facets are described.
FACETS_DOC = "https://github.com/shardtrain/shardtrain/tree/main/airflow_provider#openlineage"


@attr.define
class ShardtrainModelDatasetFacet(DatasetFacet):
    """A published model: how it was trained and how well it did."""

    framework: str
    requestId: str  # noqa: N815 (OpenLineage facets are camelCase)
    params: dict[str, Any] = attr.field(factory=dict)
    metrics: dict[str, dict[str, float]] = attr.field(factory=dict)
    numRows: dict[str, int] = attr.field(factory=dict)  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return f"{FACETS_DOC}-model-facet"


@attr.define
class ShardtrainRegisteredModelDatasetFacet(DatasetFacet):
    """A registered model version and the published model it came from."""

    registry: str
    name: str
    version: str
    modelUri: str  # noqa: N815
    sourceUri: str  # noqa: N815
    requestId: str  # noqa: N815
    created: bool = True

    @staticmethod
    def _get_schema() -> str:
        return f"{FACETS_DOC}-registered-model-facet"


def snowflake_context(conn_id: str | None) -> SnowflakeContext:
    """The account (with its region), database and schema of a Snowflake connection, read
    as the Snowflake provider reads them (no query is run, no session opened); what it
    cannot know (a local-testing connection has no account) stays unknown."""
    if not conn_id:
        return SnowflakeContext()
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson or {}

    def field(name: str) -> str | None:  # the provider's extras, also in their old prefixed form
        return extra.get(name) or extra.get(f"extra__snowflake__{name}") or None

    account, region = field("account"), field("region")
    if extra.get("local_testing"):
        account = None
    elif account and region and "." not in account:
        account = f"{account}.{region}"  # as the provider's connection URI spells the host
    return SnowflakeContext(account, field("database"), conn.schema or field("schema"))


def sql_tables(sql: str) -> list[str]:
    """The tables a query reads, by OpenLineage's SQL parser (Snowflake dialect); the plain
    reading of ``query_tables`` when the parser cannot."""
    try:
        from openlineage_sql import parse

        meta = parse([sql], dialect="snowflake")
    except Exception:
        meta = None
    if meta is None:
        return query_tables(sql)
    return [t.qualified_name for t in meta.in_tables]


def dataset(named: LineageDataset, **facets: Any) -> Dataset:
    return Dataset(namespace=named.namespace, name=named.name, facets=facets)


def for_training(operator: Any, task_instance: Any) -> OperatorLineage:
    """A training operator's lineage: from its rendered arguments, and from the artifact it
    published (``operator._published``) when it got that far; on failure, what it read and
    where the model was to go."""
    from shardtrain_airflow.operators.train import request_id_for

    spec = TrainingSpec(
        framework=operator.framework,
        request_id=request_id_for(task_instance),
        artifact_stage_location=operator.artifact_stage_location or None,
        **operator.spec_fields(),
    )
    artifact = getattr(operator, "_published", None)
    lineage = names.training_lineage(
        spec,
        artifact,
        snowflake=snowflake_context(operator.snowflake_conn_id),
        tables_of=sql_tables,
    )
    return training_lineage(lineage, published=artifact is not None)


def for_registration(operator: Any) -> OperatorLineage:
    """A registration operator's lineage: the model in; the registry entry out once
    registered (``operator._registered``)."""
    snowflake = snowflake_context(operator.snowflake_conn_id)
    registered = getattr(operator, "_registered", None)
    if registered is not None:
        return registration_lineage(registered, operator.registry, snowflake)
    model = operator.model
    uri = model.get("uri") if isinstance(model, dict) else model
    inputs = [dataset(stage_dataset(uri, snowflake))] if isinstance(uri, str) and uri else []
    return OperatorLineage(inputs=inputs)


def training_lineage(lineage: TrainingLineage, *, published: bool) -> OperatorLineage:
    """Inputs (each with the schema of the columns used) and the model's location as the
    output, with the model facet once the model is published."""
    inputs = []
    for data in lineage.inputs:
        facets = {}
        if data.columns:
            fields = [SchemaDatasetFacetFields(name=c, type=t) for c, t in data.columns]
            facets[SCHEMA_FACET] = SchemaDatasetFacet(fields=fields)
        inputs += [dataset(d, **facets) for d in data.datasets]
    facts = dict(lineage.facts)
    model_facets = {}
    if published and facts:
        model_facets[MODEL_FACET] = ShardtrainModelDatasetFacet(
            framework=facts["framework"],
            requestId=facts["requestId"],
            params=safe_params(facts.get("params", {})),
            metrics=facts.get("metrics", {}),
            numRows=facts.get("numRows", {}),
        )
    return OperatorLineage(inputs=inputs, outputs=[dataset(lineage.model, **model_facets)])


def registration_lineage(
    registered: Any, registry: str | None, snowflake: SnowflakeContext
) -> OperatorLineage:
    """The published model in, the registry entry (its version) out."""
    entry = registry_dataset(registry, registered.name, registered.version, snowflake)
    facet = ShardtrainRegisteredModelDatasetFacet(
        registry=registered.registry,
        name=registered.name,
        version=registered.version,
        modelUri=redact_text(registered.model_uri),
        sourceUri=redact_text(registered.source_uri),
        requestId=registered.request_id,
        created=registered.created,
    )
    return OperatorLineage(
        inputs=[dataset(stage_dataset(registered.source_uri, snowflake))],
        outputs=[dataset(entry, **{REGISTRY_FACET: facet})],
    )
