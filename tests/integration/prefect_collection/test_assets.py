"""The training and registration tasks' assets, as the Prefect server recorded them: the data
as upstream assets of the model's materialisation, the model as the upstream of the registry
entry's (table -> model -> registered model), each with its metadata."""

from __future__ import annotations

import time

import pytest
from prefect import flow

from prefect_shardtrain import ModelStage, register_model, train_xgboost
from shardtrain.integrations.lineage import path_dataset
from shardtrain.runtime import worker_group
from tests.helpers import FEATURES, LABEL, write_regression

pytestmark = pytest.mark.prefect  # the Prefect harness and a real local Ray


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_cluster):
    yield
    worker_group.shutdown_workers()


def asset_events(
    api, keys: list[str], count: int, timeout: float = 30.0, settle: float = 0.0
) -> list:
    """The server's ``prefect.asset.*`` events about ``keys`` (waiting for ``count``: the
    client sends events in the background). With ``settle``, read once more that long after
    ``count`` arrived: the server stores events in batches (every 5 s), so an extra event
    sent with them is stored by then."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)
    query = EventFilter(
        event=EventNameFilter(prefix=["prefect.asset."]), resource=EventResourceFilter(id=keys)
    )
    deadline = time.monotonic() + timeout
    while True:
        events = api.read_events(filter=query, limit=50).events
        if len(events) >= count and settle:
            time.sleep(settle)
            return api.read_events(filter=query, limit=50).events
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def related_assets(event, role: str = "asset") -> set[str]:
    return {r.id for r in event.related if r.role == role}


def test_training_and_registration_record_table_to_model_to_registry(
    api, mlflow_registry, tmp_path
):
    train = tmp_path / "data" / "train"
    holdout = tmp_path / "data" / "holdout"
    write_regression(train / "part-0.parquet", 400)
    write_regression(holdout / "part-0.parquet", 100, seed=1)
    stage = ModelStage(uri=str(tmp_path / "stage"))
    registry = mlflow_registry

    @flow
    def train_and_register():
        artifact = train_xgboost(
            data=str(train),
            eval_data=str(holdout),
            input_cols=FEATURES,
            label_col=LABEL,
            n_estimators=3,
            params={"max_depth": 3},
            scaling_config={"num_workers": 1, "num_cpu_per_worker": 1},
            stage=stage,
        )
        return artifact, register_model(artifact, name="assets_model", registry=registry)

    artifact, registered = train_and_register()
    model_key = f"file://{artifact.uri}"
    entry_key = f"{registry}/assets_model/{registered.version}"
    data_keys = {f"file://{train}", f"file://{holdout}"}
    # the data referenced (2) and the model materialised by the training, the model referenced
    # and the entry materialised by the registration (count=6 waited out the timeout each run)
    events = asset_events(api, [model_key, entry_key, *data_keys], count=5, settle=6.0)
    by_kind = {}
    for event in events:
        by_kind.setdefault((event.event, event.resource.id), []).append(event)

    # the model: materialised from the training and eval data by shardtrain, with metadata
    (made,) = by_kind[("prefect.asset.materialization.succeeded", model_key)]
    assert related_assets(made) == data_keys
    assert related_assets(made, "asset-materialized-by") == {"shardtrain"}
    assert made.resource.name == artifact.uri
    assert made.payload["framework"] == "xgboost"
    assert made.payload["requestId"] == artifact.request_id
    assert made.payload["params"]["max_depth"] == 3
    assert made.payload["metrics"] == artifact.metrics and set(made.payload["metrics"]) == {
        "train",
        "eval",
    }
    for key in data_keys:  # the data were referenced as upstream assets
        assert ("prefect.asset.referenced", key) in by_kind

    # the registry entry: materialised from the model (inherited from the training task and
    # declared by the registration alike: one upstream asset)
    (entry,) = by_kind[("prefect.asset.materialization.succeeded", entry_key)]
    assert related_assets(entry) == {model_key}
    assert entry.payload["version"] == registered.version
    assert (
        entry.payload["modelUri"]
        == registered.model_uri
        == f"models:/assets_model/{registered.version}"
    )
    assert entry.payload["sourceUri"] == artifact.uri
    assert entry.payload["requestId"] == artifact.request_id
    assert ("prefect.asset.referenced", model_key) in by_kind


def test_a_failed_fit_records_a_failed_materialisation_of_its_model(api, tmp_path):
    train = tmp_path / "train"
    write_regression(train / "part-0.parquet", 200)
    stage = ModelStage(uri=str(tmp_path / "stage"))

    @flow
    def bad_columns():
        return train_xgboost(
            data=str(train),
            input_cols=["NO_SUCH_COLUMN"],
            label_col=LABEL,
            n_estimators=2,
            scaling_config={"num_workers": 1, "num_cpu_per_worker": 1},
            stage=stage,
        )

    state = bad_columns(return_state=True)
    assert state.is_failed()
    stage_prefix = path_dataset(str(tmp_path / "stage")).asset_key + "/model/"
    data_key = path_dataset(str(train)).asset_key
    events = asset_events(api, [data_key], count=1)
    assert [e.event for e in events] == ["prefect.asset.referenced"]
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    failed = api.read_events(
        filter=EventFilter(
            event=EventNameFilter(name=["prefect.asset.materialization.failed"]),
            resource=EventResourceFilter(id_prefix=[stage_prefix]),
        ),
        limit=10,
    ).events
    assert len(failed) == 1 and related_assets(failed[0]) == {data_key}
    assert failed[0].payload["framework"] == "xgboost" and "metrics" not in failed[0].payload
