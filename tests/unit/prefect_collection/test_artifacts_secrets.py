"""What the Prefect artifacts show holds no credential: the dashboard link, the training-curve
image and its note go through ``shardtrain.secrets``' ``redact_text`` (the artifact calls are
replaced by recorders: no Prefect server is involved)."""

from __future__ import annotations

import pytest

pytest.importorskip("prefect")

from prefect_shardtrain import artifacts  # noqa: E402
from shardtrain.model.artifact import ModelArtifact  # noqa: E402

VALUE = "s3cr3t-VALUE-never-shown-8731"


@pytest.fixture
def made(monkeypatch):
    calls = []
    for name in ("create_link_artifact", "create_image_artifact", "create_markdown_artifact"):
        monkeypatch.setattr(
            artifacts, name, lambda name=name, **kwargs: calls.append((name, kwargs))
        )
    return calls


def test_the_dashboard_link_has_no_user_info(made):
    artifacts.publish_dashboard("r1", "http://alice:" + VALUE + "@head:8265/#/jobs/j")
    assert made == [
        (
            "create_link_artifact",
            {
                "link": "http://head:8265/#/jobs/j",
                "link_text": "Ray dashboard",
                "key": "ray-dashboard-r1",
                "description": "The Ray cluster training this model",
            },
        )
    ]


@pytest.mark.parametrize(
    "stage,kind",
    [
        ("memory://k:" + VALUE + "@bucket", "create_markdown_artifact"),
        ("https://u:" + VALUE + "@files.example.com", "create_image_artifact"),
    ],
)
def test_the_curves_artifact_shows_no_credentials(made, stage, kind):
    artifact = ModelArtifact(
        uri=f"{stage}/model/r1",
        framework="xgboost",
        request_id="r1",
        curves=f"{stage}/model/r1/attempt-1/curves.png",
    )
    artifacts.publish_curves(artifact)
    assert [name for name, _ in made] == [kind]
    assert VALUE not in repr(made)
