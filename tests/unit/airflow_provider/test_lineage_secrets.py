"""The OpenLineage facets of the Airflow operators hold no credential: the model facet's
params and the registered-model facet's URIs go through ``shardtrain.secrets`` (in process:
the facets are built from plain values, no Airflow service is involved)."""

from __future__ import annotations

import pytest

pytest.importorskip("airflow.providers.openlineage")

from shardtrain.integrations import TrainingSpec  # noqa: E402
from shardtrain.integrations.lineage import (  # noqa: E402
    SnowflakeContext,
    TrainingLineage,
    training_lineage,
)
from shardtrain.model.registry import RegisteredModel  # noqa: E402
from shardtrain_airflow.lineage import (  # noqa: E402
    MODEL_FACET,
    REGISTRY_FACET,
    registration_lineage,
)
from shardtrain_airflow.lineage import training_lineage as operator_lineage  # noqa: E402

VALUE = "s3cr3t-VALUE-never-shown-8731"


def model_lineage(params) -> TrainingLineage:
    spec = TrainingSpec(framework="pytorch", request_id="r1", train_func="pkg.module:train")
    facts = {"framework": "pytorch", "requestId": "r1", "params": params}
    return TrainingLineage((), training_lineage(spec).model, facts)


@pytest.mark.parametrize(
    "params,shown",
    [
        ({"token": VALUE, "lr": 1}, {"lr": 1}),
        ({"WANDB_API_KEY": VALUE, "layers": [32, 16]}, {"layers": [32, 16]}),
        ({"hub": {"url": "https://u:" + VALUE + "@hf.co", "hf_token": VALUE}}, {"hub": {"url": "https://hf.co"}}),
        ({"eos_token": 2, "label_key": "y"}, {"eos_token": 2, "label_key": "y"}),
    ],
)  # fmt: skip
def test_the_model_facet_holds_no_secret(params, shown):
    out = operator_lineage(model_lineage(params), published=True)
    facet = out.outputs[0].facets[MODEL_FACET]
    assert facet.params == shown
    assert VALUE not in repr(out.outputs)


def test_the_registered_model_facet_shows_uris_without_user_info():
    registered = RegisteredModel(
        registry="mlflow",
        name="m",
        version="1",
        model_uri="models:/m/1",
        source_uri="s3://k:" + VALUE + "@bucket/model/r1",
        request_id="r1",
    )
    out = registration_lineage(
        registered, "https://u:" + VALUE + "@mlflow:5000", SnowflakeContext()
    )
    assert VALUE not in repr(out.outputs) and VALUE not in repr(out.inputs)
    facet = out.outputs[0].facets[REGISTRY_FACET]
    assert facet.sourceUri == "s3://bucket/model/r1" and facet.modelUri == "models:/m/1"
