"""A handle on one submitted training job: status, incremental logs, wait, cancel, result.

The model comes back through the stage, never through the job's stdout: ``result()`` reads
the manifest the job published under the spec's request id and checks that it is that
request's model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shardtrain.errors import JobError, JobFailedError, JobServerError, JobStoppedError
from shardtrain.integrations import TrainingSpec
from shardtrain.jobs.conventions import (  # stdlib only: Airflow's trigger loads it too
    FAILED,
    MAX_LOG_LINE_CHARS,
    PENDING,
    RUNNING,
    STOP_MARKER_SUFFIX,
    STOPPED,
    SUCCEEDED,
    TERMINAL,
    clean_log_line,
    new_log_lines,
    stop_marker_id,
    stop_marker_request,
)
from shardtrain.jobs.target import JobTarget
from shardtrain.model.artifact import ModelArtifact
from shardtrain.model.manifest import MANIFEST, read_manifest
from shardtrain.secrets import redact_text
from shardtrain.stage import open_stage
from shardtrain.stage.base import join

__all__ = [  # the states, cleaning and stop marker are conventions.py's, re-exported
    "FAILED",
    "LOG_TAIL_LINES",
    "MAX_LOG_LINE_CHARS",
    "PENDING",
    "RUNNING",
    "STOPPED",
    "STOP_MARKER_SUFFIX",
    "STOP_WAIT_S",
    "SUCCEEDED",
    "TERMINAL",
    "JobHandle",
    "clean_log_line",
    "read_published",
    "stop_marker_id",
]

#: Lines of the job's log a failure message carries.
LOG_TAIL_LINES = 20
#: Seconds ``stop()`` waits by default for a stopped job to reach a terminal state (Ray's job
#: server stops the driver with SIGTERM, then SIGKILL after 3 s).
STOP_WAIT_S = 20.0

logger = logging.getLogger("shardtrain.jobs")


@dataclass
class JobHandle:
    """One Ray job running a ``TrainingSpec``.

    Args:
        submission_id: the job's id on the job server (derived from the request id).
        spec: what the job trains (its request id and stage locate the result).
        target: the job server.
        reattached: True when submit found this job already there instead of starting it.
        log_offset: characters of the job's log already forwarded (by this handle, an earlier
            try or a trigger): ``new_log_lines`` starts there.
    """

    submission_id: str
    spec: TrainingSpec
    target: JobTarget
    reattached: bool = False
    log_offset: int = field(default=0, repr=False)
    _client: Any = field(default=None, repr=False)

    @property
    def client(self):
        if self._client is None:
            self._client = self.target.client()
        return self._client

    @property
    def dashboard_url(self) -> str:
        return self.target.dashboard_link(self.submission_id)

    def status(self) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
        try:
            return str(self.client.get_job_status(self.submission_id))
        except RuntimeError as exc:
            raise JobServerError(
                f"the job server at {self.target.shown_address} could not report job "
                f"{self.submission_id}: {redact_text(str(exc).splitlines()[0][:300])}",
                address=self.target.shown_address,
            ) from exc

    def all_logs(self) -> str:
        """The job's whole log so far."""
        try:
            return self.client.get_job_logs(self.submission_id)
        except RuntimeError as exc:
            raise JobServerError(
                f"could not read the log of job {self.submission_id}: {redact_text(str(exc))}",
                address=self.target.shown_address,
            ) from exc

    def logs(self) -> str:
        """What the job logged since the previous call (from ``log_offset`` on the first)."""
        text = self.all_logs()
        new, self.log_offset = text[self.log_offset :], len(text)
        return new

    def new_log_lines(self, *, final: bool = False) -> list[str]:
        """The complete lines the job logged past ``log_offset``, cleaned (``clean_log_line``),
        and the offset moved past them; a line still being written waits for its newline
        unless ``final`` (the job has ended)."""
        lines, self.log_offset = new_log_lines(self.all_logs(), self.log_offset, final=final)
        return lines

    def wait(
        self,
        *,
        timeout_s: float | None = None,
        poll_s: float = 1.0,
        on_log: Callable[[str], None] | None = None,
        on_offset: Callable[[int], object] | None = None,
    ) -> str:
        """Block until the job ends; forward new log lines (from ``log_offset`` on, cleaned)
        to ``on_log`` as they come, then tell ``on_offset`` the new offset (to keep it where a
        later try finds it).

        Returns SUCCEEDED; raises ``JobFailedError`` / ``JobStoppedError`` otherwise and
        ``TimeoutError`` after ``timeout_s`` (the job keeps running).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.status()
            if on_log is not None:
                lines = self.new_log_lines(final=status in TERMINAL)
                for line in lines:
                    on_log(line)
                if lines and on_offset is not None:
                    on_offset(self.log_offset)
            if status in TERMINAL:
                self.raise_for_status(status)
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {self.submission_id} still {status} after {timeout_s} s; it keeps "
                    f"running: {self.dashboard_url}"
                )
            time.sleep(poll_s)

    def raise_for_status(self, status: str | None = None) -> None:
        """Raise the ``JobError`` that a FAILED or STOPPED job stands for."""
        status = status or self.status()
        if status == SUCCEEDED or status not in TERMINAL:
            return
        tail = "\n".join(clean_log_line(x) for x in self.all_logs().splitlines()[-LOG_TAIL_LINES:])
        error = JobStoppedError if status == STOPPED else JobFailedError
        what = "was stopped before it finished" if status == STOPPED else "failed"
        raise error(
            f"training job {self.submission_id} (request {self.spec.request_id}) {what}. "
            f"Its last log lines:\n{tail}\nFull log: {self.dashboard_url}",
            submission_id=self.submission_id,
            status=status,
            log_tail=tail,
        )

    def cancel(self) -> bool:
        """Ask the job server to stop the job (True when it was still running) and record that
        shardtrain asked (``stop_requested``); returns at once, the job ends a little later
        (``stop`` waits for it). A stopped job publishes nothing."""
        self._mark_stop_requested()
        try:
            return bool(self.client.stop_job(self.submission_id))
        except RuntimeError as exc:
            raise JobServerError(
                f"could not stop job {self.submission_id}: {redact_text(str(exc))}",
                address=self.target.shown_address,
            ) from exc

    def stop(self, *, wait_s: float = STOP_WAIT_S, poll_s: float = 0.25) -> str:
        """Stop the job and wait, at most ``wait_s`` seconds, until it has ended; returns its
        status then (not terminal when the bound expired, which is logged)."""
        self.cancel()
        deadline = time.monotonic() + wait_s
        while True:
            status = self.status()
            if status in TERMINAL:
                return status
            if time.monotonic() >= deadline:
                logger.warning(
                    "job %s (request %s) still %s %.0f s after its stop was requested; "
                    "not waiting longer",
                    self.submission_id,
                    self.spec.request_id,
                    status,
                    wait_s,
                )
                return status
            time.sleep(poll_s)

    def _mark_stop_requested(self) -> None:
        try:
            self.client.submit_job(**stop_marker_request(self.submission_id))
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                logger.warning(
                    "could not record the stop of job %s: %s",
                    self.submission_id,
                    redact_text(str(exc).splitlines()[0][:300]) if str(exc) else type(exc).__name__,
                )

    def stop_requested(self) -> bool:
        """Whether shardtrain asked for this job to stop (a kill of the task or run that ran
        it), as opposed to a user stopping it on the cluster."""
        marker = stop_marker_id(self.submission_id)
        try:
            return any(job.submission_id == marker for job in self.client.list_jobs())
        except RuntimeError as exc:
            raise JobServerError(
                f"could not list the jobs of {self.target.shown_address}: {redact_text(str(exc))}",
                address=self.target.shown_address,
            ) from exc

    def result(
        self, *, session: Any = None, storage_options: dict[str, Any] | None = None
    ) -> ModelArtifact | None:
        """The published model's artifact, read from the stage's manifest.

        Raises the job's error unless it SUCCEEDED. None for a PyTorch job whose train
        function saved no model.
        """
        status = self.status()
        if status != SUCCEEDED:
            self.raise_for_status(status)
            raise JobError(
                f"job {self.submission_id} is {status}; wait() for it before asking for its "
                "result.",
                submission_id=self.submission_id,
                status=status,
            )
        return read_published(self.spec, session=session, storage_options=storage_options)


def read_published(
    spec: TrainingSpec, *, session: Any = None, storage_options: dict[str, Any] | None = None
) -> ModelArtifact | None:
    """The artifact published for ``spec.request_id`` at its stage.

    None for a PyTorch run that published nothing; ``ModelIntegrityError`` when a boosting
    run's location holds no whole model.
    """
    stage = open_stage(
        spec.artifact_stage_location, session=session, storage_options=storage_options
    )
    location = open_stage(
        stage.child_uri(join("model", spec.request_id)),
        session=session,
        storage_options=storage_options,
    )
    if spec.framework == "pytorch" and not location.exists(MANIFEST):
        return None
    artifact = ModelArtifact.from_dict(read_manifest(location))
    if artifact.request_id != spec.request_id or artifact.framework != spec.framework:
        raise JobError(
            f"the model at {location.uri} is not the one job for request {spec.request_id} "
            "trains (another run published there).",
            uri=location.uri,
        )
    return artifact
