"""What a training task shows in Prefect beside its metrics table: the training-curve image,
a progress bar that moves while the fit runs, and a link to the Ray dashboard.

The progress comes from core's observer interface (``shardtrain.runtime.progress``): core
knows nothing of Prefect, and a task run as a Ray Job reads the same progress back from the
job's log lines. What an artifact shows goes through ``shardtrain.secrets``' ``redact_text``
first: a URL's user info or a signed URL's signature never reaches the Prefect UI.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from uuid import UUID

from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)

from shardtrain import ModelArtifact
from shardtrain.model.curves import curves_uri
from shardtrain.runtime.progress import Progress, observe_progress
from shardtrain.secrets import redact_text
from shardtrain.stage.urls import browse_url


def artifact_key(request_id: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", request_id.lower())[:90].strip("-")


def publish_curves(artifact: ModelArtifact) -> None:
    """The training-curve image: an image artifact where the stage has a browsable URL, else a
    markdown note naming where it is; nothing when the fit drew none."""
    uri = curves_uri(artifact)
    if uri is None:
        return
    key = f"curves-{artifact_key(artifact.request_id)}"
    description = redact_text(f"Training curves of {artifact.uri}")
    shown = redact_text(uri)
    url = browse_url(uri, is_file=True)
    if url:
        create_image_artifact(image_url=redact_text(url), key=key, description=description)
    else:
        create_markdown_artifact(
            markdown=f"**Training curves** of the {artifact.framework} model: `{shown}`",
            key=key,
            description=description,
        )


def publish_dashboard(request_id: str, url: str, text: str = "Ray dashboard") -> None:
    """A link artifact to the Ray dashboard (or the job's page); nothing without one."""
    if url:
        create_link_artifact(
            link=redact_text(url),
            link_text=redact_text(text),
            key=f"ray-dashboard-{artifact_key(request_id)}",
            description="The Ray cluster training this model",
        )


class ProgressBar:
    """A progress artifact updated as the fit reports its rounds (``update``), or as a Ray
    job's log lines name them (``from_log``)."""

    def __init__(self, request_id: str) -> None:
        self.id: UUID = create_progress_artifact(
            progress=0.0,
            key=f"progress-{artifact_key(request_id)}",
            description="Boosting rounds done",
        )
        self.percent = 0.0

    def update(self, progress: Progress) -> None:
        if progress.percent >= self.percent:  # a bar only moves forward
            self.percent = progress.percent
            update_progress_artifact(self.id, progress.percent, description=progress.format())

    def from_log(self, line: str) -> None:
        progress = Progress.parse(line)
        if progress is not None:
            self.update(progress)

    def complete(self) -> None:
        if self.percent < 100.0:
            self.percent = 100.0
            update_progress_artifact(self.id, 100.0)


@contextlib.contextmanager
def progress_bar(request_id: str) -> Iterator[ProgressBar]:
    """A progress artifact fed by every fit this block runs; at 100% once it succeeds."""
    bar = ProgressBar(request_id)
    with observe_progress(bar.update):
        yield bar
    bar.complete()
