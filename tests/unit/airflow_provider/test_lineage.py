"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/system/airflow_provider/test_lineage.py.]

OpenLineage from the training and registration operators: dataset names for every kind of
data and location (fast), the facets an operator reports, and the events the OpenLineage
provider emitted (through its file transport) for a DAG run with dag.test(): data -> model ->
registry entry, in process and deferred to a Ray Job."""

from __future__ import annotations

import os

import pytest

from shardtrain.integrations import DataSpec, TrainingSpec
from shardtrain.integrations.lineage import (
    LineageDataset,
    SnowflakeContext,
    data_datasets,
    model_location,
    path_dataset,
    query_tables,
    registry_dataset,
    safe_params,
    snowflake_authority,
    stage_dataset,
)

SF = SnowflakeContext(account="myorg-myaccount", database="ml", schema="public")
NS = "snowflake://myorg-myaccount"
SECRET = "hunter2-lineage-secret"
SNOWFLAKE_CONN = {
    "conn_type": "snowflake",
    "login": "trainer",
    "password": SECRET,
    "schema": "FEATURES",
    "extra": {"account": "xy12345", "region": "us-east-1", "database": "ML", "warehouse": "W"},
}


# -- naming, per kind of data and location ---------------------------------------------------


def test_snowflake_tables_are_named_in_the_account_with_the_connection_defaults():
    def names(table):
        return [(d.namespace, d.name) for d in data_datasets(DataSpec(table=table), SF)]

    assert names("training_data") == [(NS, "ML.PUBLIC.TRAINING_DATA")]
    assert names("raw.events") == [(NS, "ML.RAW.EVENTS")]
    assert names('other."Db".t') == [(NS, "OTHER.Db.T")]  # quoted: exact case
    unknown = data_datasets(DataSpec(table="s.t"))  # no connection: no account, no defaults
    assert unknown == (LineageDataset("snowflake", "S.T"),)


def test_a_query_names_the_tables_it_reads():
    sql = """
        with recent as (select * from raw.events where ts > '2026-01-01 from x')
        select r.*, d.region -- from comments
        from recent r join "Dims"."Region" d on r.k = d.k
        left join table(flatten(input => r.tags)) f
        where r.id in (select id from ml.public.allow_list)
    """
    assert query_tables(sql) == ["raw.events", '"Dims"."Region"', "ml.public.allow_list"]
    named = data_datasets(DataSpec(query=sql), SF)
    assert [d.name for d in named] == ["ML.RAW.EVENTS", "ML.Dims.Region", "ML.PUBLIC.ALLOW_LIST"]
    assert {d.namespace for d in named} == {NS}


@pytest.mark.parametrize(
    "location,namespace,name",
    [
        ("s3://bucket/features/2026/", "s3://bucket", "features/2026"),
        ("s3a://bucket/x.parquet", "s3://bucket", "x.parquet"),
        ("s3://AKIAKEY:s3cr3t@bucket/x", "s3://bucket", "x"),  # never a credential
        ("gs://bucket/d", "gs://bucket", "d"),
        ("abfss://data@acct.dfs.core.windows.net/t", "abfss://data@acct.dfs.core.windows.net", "t"),
        ("/data/train/", "file", "/data/train"),
        ("file:///data/train", "file", "/data/train"),
        ("relative/train", "file", os.path.abspath("relative/train")),
    ],
)
def test_parquet_locations_are_named_by_their_store(location, namespace, name):
    assert path_dataset(location) == LineageDataset(namespace, name)


def test_model_locations_on_every_kind_of_stage():
    spec = TrainingSpec(
        framework="xgboost", request_id="r1", train_data="p", input_cols=["A"], label_col="Y"
    )
    at = dict(artifact_stage_location="@MODELS/prod")
    on_snowflake = TrainingSpec(**{**spec.to_dict(), **at})
    assert model_location(on_snowflake) == "@MODELS/prod/model/r1"
    assert stage_dataset(model_location(on_snowflake), SF) == LineageDataset(
        NS, "ML.PUBLIC.MODELS/prod/model/r1"
    )
    assert stage_dataset("ML.PUBLIC.MODELS/model/r1", SF).name == "ML.PUBLIC.MODELS/model/r1"
    assert stage_dataset("@~/m/model/r1") == LineageDataset("snowflake", "~/m/model/r1")
    assert stage_dataset("s3://b/stage/model/r1") == LineageDataset("s3://b", "stage/model/r1")
    default = stage_dataset(model_location(spec))  # the embedded default stage
    assert default.namespace == "file" and default.name.endswith("/stage/model/r1")


def test_registry_entries_are_named_by_registry_without_credentials():
    mlflow = registry_dataset("https://user:tok3n@mlflow.example.com/", "churn", "3")
    assert mlflow == LineageDataset("https://mlflow.example.com", "churn/3")
    embedded = registry_dataset(None, "churn", "1")
    assert embedded.namespace.startswith("sqlite:///") and embedded.name == "churn/1"
    assert registry_dataset("snowflake", "churn", "V1", SF) == LineageDataset(
        NS, "ML.PUBLIC.CHURN/V1"
    )


def test_account_names_agree_with_the_snowflake_providers_openlineage_support():
    from airflow.providers.snowflake.utils.openlineage import fix_account_name

    for account in ("xy12345", "xy12345.us-east-1", "xy12345.eu-west-1.azure", "myorg-acct"):
        assert snowflake_authority(account) == fix_account_name(account)


def test_secret_named_parameters_and_url_credentials_never_reach_a_facet():
    shown = safe_params({"eta": 0.1, "token": "x", "nested": {"password": "p", "u": "s3://k:s@b/"}})
    assert shown == {"eta": 0.1, "nested": {"u": "s3://b/"}}
