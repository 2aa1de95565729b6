"""What a training task shows in Prefect beside its metrics table: the training-curve image,
a progress artifact that moves while the fit runs, and a link to the Ray dashboard; read back
from the harness's API."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow

from prefect_shardtrain import ModelStage, train_xgboost
from prefect_shardtrain.tasks import artifact_key
from shardtrain.runtime import progress as progress_module
from shardtrain.runtime import worker_group
from shardtrain.runtime.progress import Progress, observe_progress

pytestmark = pytest.mark.prefect  # the Prefect harness and a real local Ray


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_cluster):
    yield
    worker_group.shutdown_workers()


def by_key(api, key: str):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    found = api.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found[0] if found else None


def test_curves_progress_and_dashboard_artifacts(api, ray_head, tmp_path, monkeypatch):
    from example_data import FEATURES, LABEL, prepare

    monkeypatch.setattr(progress_module, "OBSERVER_EVERY_S", 0.0)  # every round to the bar
    data = prepare(5000)
    bar_seen: list[float] = []
    keys_before = {a.key for a in api.read_artifacts()}

    def spy(progress: Progress) -> None:
        """Runs beside the task's own observer (set inside the task, so after this one): what
        the API holds for the task's progress artifact while the fit runs."""
        bars = [
            a
            for a in api.read_artifacts()
            if (a.key or "").startswith("progress-") and a.key not in keys_before
        ]
        if bars and not progress.done:
            bar_seen.append(bars[0].data)

    @flow
    def curves_flow():
        return train_xgboost(
            data["train"],
            FEATURES,
            LABEL,
            eval_data=data["holdout"],
            n_estimators=30,
            params={"eta": 0.3},
            scaling_config={"num_workers": 1, "num_cpu_per_worker": 1},
            stage=ModelStage(uri=str(tmp_path / "stage")),
        )

    with observe_progress(spy):
        artifact = curves_flow()
    key = artifact_key(artifact.request_id)

    image = by_key(api, f"curves-{key}")
    assert image.type == "image" and image.data == Path(artifact.curves).as_uri()
    assert Path(artifact.curves).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert by_key(api, f"metrics-{key}").type == "table"  # beside today's metrics table

    bar = by_key(api, f"progress-{key}")
    assert bar.type == "progress" and bar.data == 100.0
    assert bar.description.startswith("progress: round 30 of 30 (100%), done in ")
    assert bar_seen == sorted(bar_seen) and 0.0 < bar_seen[-1] < 100.0  # moved while training

    link = by_key(api, f"ray-dashboard-{key}")
    assert f"[Ray dashboard]({ray_head.dashboard_url})" == link.data
