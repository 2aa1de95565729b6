"""Flows under prefect_test_harness with a real local Ray: a retry, block secrets, sessions,
concurrent task runs (the example flows themselves run as served deployments: tests/system)."""

from __future__ import annotations

import json
import time

import pytest
from prefect import flow, task
from prefect_snowflake import SnowflakeCredentials

from prefect_shardtrain import ModelStage, train_xgboost
from shardtrain import load_model
from shardtrain.runtime import worker_group

pytestmark = pytest.mark.prefect  # the Prefect harness and a real local Ray


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_cluster):
    yield
    worker_group.shutdown_workers()


def flush_logs() -> None:
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)


def logs_of(api, flow_run_id) -> str:
    from prefect.client.schemas.filters import LogFilter

    flush_logs()
    time.sleep(1)
    logs = api.read_logs(log_filter=LogFilter(flow_run_id={"any_": [flow_run_id]}))
    return "\n".join(log.message for log in logs)


# Each example flow end to end (result, registration, Prefect artifacts, log): run as a served
# deployment in tests/system/prefect_collection/test_deployments.py.


def test_retry_republishes_to_the_same_location(api, tmp_path):
    from example_data import FEATURES, LABEL, prepare

    data = prepare(5000)
    published = []

    @task(retries=1, retry_delay_seconds=0)
    def flaky_train():
        from prefect.runtime import task_run

        artifact = train_xgboost.fn(
            data["train"],
            FEATURES,
            LABEL,
            n_estimators=5,
            scaling_config={"num_workers": 2, "num_cpu_per_worker": 1},
        )
        published.append(artifact.uri)
        if task_run.get_run_count() == 1:
            raise RuntimeError("transient failure after publishing")
        return artifact

    @flow
    def retrying():
        return flaky_train()

    artifact = retrying()
    assert len(published) == 2 and published[0] == published[1] == artifact.uri
    assert load_model(artifact).num_boosted_rounds() == 5


def test_block_secrets_never_reach_results_or_logs(api, tmp_path):
    """The Snowflake credentials block carries a password; the session is Snowpark's local
    emulation (no live account is reachable here), selected by `local_testing`."""
    from example_data import FEATURES, LABEL, prepare

    password, s3_secret = "pw-prefect-never-logged-5531", "s3-secret-never-logged-8812"
    stage = ModelStage(
        uri="@ML.PUBLIC.MODELS",
        local_testing=True,
        snowflake_credentials=SnowflakeCredentials(account="acme", user="u", password=password),
        storage_options={"secret": s3_secret},
    )
    data = prepare(5000)

    @flow
    def with_secrets():
        return train_xgboost(
            data["train"],
            FEATURES[:3],
            LABEL,
            n_estimators=3,
            stage=stage,
            scaling_config={"num_workers": 2, "num_cpu_per_worker": 1},
        )

    state = with_secrets(return_state=True)
    artifact = state.result()
    assert artifact.uri.startswith("@ML.PUBLIC.MODELS/model/prefect-")
    text = (
        json.dumps(artifact.to_dict())
        + repr(artifact)
        + logs_of(api, state.state_details.flow_run_id)
    )
    assert password not in text and s3_secret not in text
    assert password not in repr(stage) and s3_secret not in repr(stage)


def test_tasks_close_the_sessions_they_open(api, mlflow_registry, tmp_path):
    """The training task's stage session and register_model's session are closed when the
    tasks end (before, every task run left its Snowpark session open). Sessions run on
    Snowpark's local emulation: no live account is reachable here."""
    from example_data import FEATURES, LABEL, prepare

    from prefect_shardtrain import register_model
    from tests.helpers import open_sessions

    data = prepare(5000)
    to_snowflake = ModelStage(uri="@ML.PUBLIC.MODELS", local_testing=True)
    local = ModelStage(uri=str(tmp_path / "stage"), local_testing=True)
    registry = mlflow_registry

    @flow
    def train_and_register():
        scaling = {"num_workers": 2, "num_cpu_per_worker": 1}
        on_snowflake = train_xgboost(
            data["train"], FEATURES[:3], LABEL, n_estimators=2, stage=to_snowflake,
            scaling_config=scaling,
        )  # fmt: skip
        artifact = train_xgboost(
            data["train"], FEATURES[:3], LABEL, n_estimators=2, stage=local,
            scaling_config=scaling,
        )  # fmt: skip
        registered = register_model(artifact, name="closing_check", registry=registry, stage=local)
        return on_snowflake, registered

    before = open_sessions()
    on_snowflake, registered = train_and_register()
    assert on_snowflake.uri.startswith("@ML.PUBLIC.MODELS/model/prefect-")
    assert registered.model_uri.startswith("models:/closing_check/")
    assert open_sessions() == before


def test_concurrent_task_runs_each_log_only_their_own_lines(api, tmp_path):
    """Two training task runs at once in one flow (threads): each run's log has its own
    model's lines and none of the other's, and the shardtrain logger is left as it was."""
    import logging

    from example_data import FEATURES, LABEL, prepare
    from prefect.client.schemas.filters import LogFilter

    data = prepare(5000)
    source = logging.getLogger("shardtrain")
    before = (source.level, source.propagate, list(source.handlers))

    @flow
    def two_at_once():
        futures = [
            train_xgboost.with_options(task_run_name=f"train-{i}").submit(
                data["train"],
                FEATURES,
                LABEL,
                n_estimators=5 + 5 * i,
                verbose_eval=1,
                scaling_config={"num_workers": 1, "num_cpu_per_worker": 1},
            )
            for i in range(2)
        ]
        return [(f.task_run_id, f.result()) for f in futures]

    runs = two_at_once()
    flush_logs()
    time.sleep(1)
    uris = {str(run_id): artifact.uri for run_id, artifact in runs}
    assert len(set(uris.values())) == 2
    for run_id, uri in uris.items():
        logs = api.read_logs(log_filter=LogFilter(task_run_id={"any_": [run_id]}))
        text = "\n".join(log.message for log in logs)
        assert f"training curves: {uri}" in text, text[-3000:]
        (other,) = set(uris.values()) - {uri}
        assert other not in text, "another task run's lines reached this run's log"
    assert (source.level, source.propagate, list(source.handlers)) == before
