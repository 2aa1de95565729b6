"""The collection is found by Prefect, and its blocks save and load through the real API."""

from __future__ import annotations

from prefect_shardtrain import ModelStage, RayCluster


def test_blocks_round_trip_through_the_api_with_secrets_kept_secret(prefect_harness):
    RayCluster(address="ray://head:10001", namespace="training").save("test-ray", overwrite=True)
    ModelStage(uri="s3://bucket/models", storage_options={"secret": "s3-value-1234"}).save(
        "test-stage", overwrite=True
    )
    cluster = RayCluster.load("test-ray")
    stage = ModelStage.load("test-stage")
    assert cluster.address == "ray://head:10001" and cluster.namespace == "training"
    assert stage.options() == {"secret": "s3-value-1234"}
    assert "s3-value-1234" not in repr(stage) and "s3-value-1234" not in str(stage.model_dump())
