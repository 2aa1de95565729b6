"""The "Model location" extra link resolves to a URL a browser opens (a bare path or stage
URI resolved against the Airflow UI's own page), or to no link."""

from __future__ import annotations

import pytest

from shardtrain_airflow.links import model_url


@pytest.mark.parametrize(
    "uri,url",
    [
        (
            "s3://models/model/req-1",
            "https://s3.console.aws.amazon.com/s3/buckets/models?prefix=model/req-1/",
        ),
        (
            "gs://models/model/req-1",
            "https://console.cloud.google.com/storage/browser/models/model/req-1",
        ),
        (
            "@ML.PUBLIC.MODELS/model/req-1",
            "https://app.snowflake.com/_deeplink/#/data/databases/ML/schemas/PUBLIC/stage/MODELS",
        ),
        ("/srv/stage/model/req-1", "file:///srv/stage/model/req-1"),
        ("file:///srv/stage/model/req-1", "file:///srv/stage/model/req-1"),
        ("https://models.example/req-1", "https://models.example/req-1"),
        ("memory://stage/model/req-1", ""),
        ("@~/model/req-1", ""),
        ("@MODELS/model/req-1", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_model_url(uri, url):
    assert model_url(uri) == url


def test_a_published_local_stage_opens_as_a_file_url(tmp_path):
    from shardtrain.model.publish import publish_model

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.ubj").write_bytes(b"{}")
    artifact = publish_model(
        tmp_path / "out", framework="xgboost", stage=str(tmp_path / "stage"), model_file="model.ubj"
    )
    url = model_url(artifact.uri)
    assert url.startswith("file:///") and url.endswith(artifact.request_id)
