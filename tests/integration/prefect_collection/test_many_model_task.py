"""train_many_models and register_many_models in one flow under the Prefect harness with a
real local Ray: the result is the run manifest, and every partition is registered with its
partition as a tag."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from prefect import flow

from prefect_shardtrain import ModelStage, register_many_models, train_many_models
from shardtrain.modeling.distributors.many_model import ManyModelRun

pytestmark = pytest.mark.prefect  # the Prefect harness and a real local Ray


def train(data_connector, context):
    import lightgbm

    df = data_connector.to_pandas()
    params = {"objective": "regression", "num_iterations": 5, "verbose": -1, "min_data_in_leaf": 2}
    return lightgbm.train(params, lightgbm.Dataset(df[["x"]], df["y"]))


def test_many_model_flow_trains_and_registers_each_partition(
    prefect_harness, ray_cluster, mlflow_registry, tmp_path
):
    pytest.importorskip("lightgbm")
    rng = np.random.default_rng(0)
    x = rng.normal(size=90)
    frame = pd.DataFrame({"group": np.repeat(["n", "s", "w"], 30), "x": x, "y": 3 * x})
    stage = ModelStage(uri=str(tmp_path / "stage"))
    registry = mlflow_registry

    @flow
    def many_models():
        manifest = train_many_models(train, partition_by="group", data=frame, stage=stage)
        registered = register_many_models(
            manifest, name="mm_groups", registry=registry, stage=stage
        )
        return manifest, registered

    manifest, registered = many_models()
    assert manifest["status"] == "SUCCESS"
    assert sorted(manifest["partitions"]) == ["n", "s", "w"]
    assert manifest["run_id"].startswith("prefect-")
    run = ManyModelRun.restore_from(manifest["run_id"], str(tmp_path / "stage"))
    assert run.get_model("s").num_trees() == 5  # pickle-free LightGBM text, a Booster

    assert sorted(registered) == ["n", "s", "w"]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=registry, registry_uri=registry)
    tags = {
        v.tags.get("shardtrain.partition")
        for v in client.search_model_versions("name = 'mm_groups'")
    }
    assert tags == {"n", "s", "w"}
