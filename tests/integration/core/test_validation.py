"""Bad input refused early and clearly; nothing outside a model folder read or written;
no credential of a URL in any message or URI. Nothing here needs Ray: every refusal comes
before a worker starts (a check that ran on the workers would need a cluster to fail)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from shardtrain import DataConnector
from shardtrain.errors import (
    DataSourceError,
    StageError,
)
from shardtrain.stage import open_stage

X = np.random.default_rng(0).random((100, 3))
Y = X @ np.array([1.0, -2.0, 0.5])
FRAME = pd.DataFrame({"A": X[:, 0], "B": X[:, 1], "C": X[:, 2], "Y": Y})


URL_KEY, URL_SECRET = "AKIAURLKEY4242", "url-secret-never-shown-77"


def assert_no_secret(*texts):
    for text in texts:
        assert URL_KEY not in str(text) and URL_SECRET not in str(text), text


def test_credentials_in_a_stage_url_never_show(s3_server, tmp_path):
    options = {"client_kwargs": s3_server["client_kwargs"]}
    with pytest.raises(StageError) as info:
        open_stage(f"s3://{URL_KEY}:{URL_SECRET}@shardtrain-test/models", storage_options=options)
    assert_no_secret(info.value, info.value.details, repr(info.value.__cause__))
    memory = open_stage(f"memory://{URL_KEY}:{URL_SECRET}@bucket/models")
    assert memory.uri == "memory://bucket/models"
    assert_no_secret(memory.uri, repr(memory), memory.child_uri("model/x"))


def test_credentials_in_a_parquet_url_never_show(s3_server):
    options = {"client_kwargs": s3_server["client_kwargs"]}
    with pytest.raises(DataSourceError) as info:
        DataConnector.from_parquet(
            f"s3://{URL_KEY}:{URL_SECRET}@shardtrain-test/train/", storage_options=options
        )
    assert_no_secret(info.value, info.value.details, repr(info.value.__cause__))


def test_missing_credentials_are_a_shardtrain_error(s3_server, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(DataSourceError, match="credentials"):
        DataConnector.from_parquet(
            "s3://shardtrain-test/nothing/", storage_options={"client_kwargs": {}, "anon": False}
        )


def test_a_missing_bucket_is_refused_when_the_stage_opens(s3_server):
    with pytest.raises(StageError, match="bucket of the stage 's3://no-such-bucket-9/models'"):
        open_stage("s3://no-such-bucket-9/models", storage_options=s3_server)
