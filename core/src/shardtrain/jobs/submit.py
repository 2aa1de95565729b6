"""Submit a ``TrainingSpec`` as a Ray Job, or reattach to the job already running it.

Submission ids derive from the request id: ``shardtrain-<request_id>-<n>``. Submitting a
request whose job is pending, running or has succeeded returns a handle on that job (a
retried or restarted orchestrator task reattaches instead of training twice). Only when every
earlier job of the request failed, was stopped or is being stopped at shardtrain's request (a
killed task's ``JobHandle.cancel``: its stop marker) does a new job start (attempt ``n + 1``),
which resumes from the run's checkpoint. Two submitters racing for the same attempt end on
one job: the job server refuses the second submission id and the loser reattaches.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shlex

from shardtrain.errors import ConfigError, JobServerError
from shardtrain.integrations import TrainingSpec
from shardtrain.jobs.handle import FAILED, STOP_MARKER_SUFFIX, STOPPED, JobHandle
from shardtrain.jobs.target import JobTarget
from shardtrain.secrets import redact_text
from shardtrain.stage import default_stage_uri

logger = logging.getLogger("shardtrain.jobs")

PREFIX = "shardtrain-"
_ATTEMPT = re.compile(r"-(\d+)$")


def submission_id(request_id: str, attempt: int) -> str:
    return f"{PREFIX}{request_id}-{attempt}"


def entrypoint(spec: TrainingSpec, python: str) -> str:
    """The job's shell command: the same fit code as in-process training."""
    return f"{shlex.quote(python)} -m shardtrain.jobs run --spec {shlex.quote(spec.to_json())}"


def _jobs_of(client, request_id: str) -> list[tuple[int, str, str]]:
    """(attempt, submission id, status) of every job of ``request_id``, oldest first; a job
    whose stop shardtrain requested counts as STOPPED even while it is still ending."""
    stem = f"{PREFIX}{request_id}-"
    found, stopping = [], set()
    for job in client.list_jobs():
        sid = job.submission_id or ""
        if sid.startswith(stem) and sid.endswith(STOP_MARKER_SUFFIX):
            stopping.add(sid[: -len(STOP_MARKER_SUFFIX)])
            continue
        match = _ATTEMPT.search(sid)
        if sid.startswith(stem) and match and sid[: match.start()] + "-" == stem:
            found.append((int(match.group(1)), sid, str(job.status)))
    for i, (n, sid, status) in enumerate(found):
        if sid in stopping and status not in (FAILED, STOPPED):
            logger.info("job %s of request %s is being stopped: not reattaching", sid, request_id)
            found[i] = (n, sid, STOPPED)
    return sorted(found)


def with_stage(spec: TrainingSpec, target: JobTarget) -> TrainingSpec:
    """``spec`` as a job on ``target`` runs it: with the stage pinned (a local cluster's
    default stage when the spec names none)."""
    if spec.artifact_stage_location is not None:
        return spec
    if not target.is_local:
        raise ConfigError(
            "a job on a remote cluster needs artifact_stage_location: a stage both the cluster "
            "and this process can reach (@DB.SCHEMA.STAGE, s3://..., gs://...).",
        )
    # Same machine: pin the embedded default stage so the job and this process agree.
    return dataclasses.replace(spec, artifact_stage_location=default_stage_uri())


def submit(spec: TrainingSpec, target: JobTarget | None = None) -> JobHandle:
    """Run ``spec`` as a Ray job on ``target`` (the local cluster when None); reattach when
    the request already has a live or finished job.

    Raises ``ConfigError`` for a spec a job cannot run (a PyTorch train function that is not
    an importable dotted path, no stage for a remote cluster), ``JobServerError`` when no job
    server answers.
    """
    target = target or JobTarget.local()
    if spec.framework == "pytorch" and not isinstance(spec.train_func, str):
        raise ConfigError(
            "a PyTorch job needs train_func as an importable dotted path ('pkg.module:func') "
            "that the cluster can import; a function object cannot travel in a job spec."
        )
    spec = with_stage(spec, target)
    text = entrypoint(spec, target.python)  # serialises the spec: refuses what JSON cannot hold
    client = target.client()
    for _ in range(5):  # a lost race moves on to the winner's job
        jobs = _jobs_of(client, spec.request_id)
        live = [(n, sid) for n, sid, status in jobs if status not in (FAILED, STOPPED)]
        if live:
            n, sid = live[-1]
            logger.info("reattaching to job %s of request %s", sid, spec.request_id)
            return JobHandle(sid, spec, target, reattached=True, _client=client)
        attempt = jobs[-1][0] + 1 if jobs else 1
        sid = submission_id(spec.request_id, attempt)
        try:
            client.submit_job(
                entrypoint=text,
                submission_id=sid,
                runtime_env=dict(target.runtime_env) or None,
                metadata={
                    "shardtrain_request_id": spec.request_id,
                    "shardtrain_framework": spec.framework,
                },
                entrypoint_num_cpus=target.entrypoint_num_cpus,
            )
        except RuntimeError as exc:
            if "already exists" in str(exc):
                continue  # another submitter won this attempt: reattach to it
            raise JobServerError(
                f"the job server at {target.shown_address} refused the job: "
                f"{redact_text(str(exc).splitlines()[0][:500])}",
                address=target.shown_address,
            ) from exc
        logger.info("submitted job %s for request %s", sid, spec.request_id)
        return JobHandle(sid, spec, target, _client=client)
    raise JobServerError(
        f"could not submit or find a job for request {spec.request_id} on {target.shown_address}.",
        address=target.shown_address,
    )


def find(spec: TrainingSpec, target: JobTarget) -> JobHandle | None:
    """The newest job of ``spec``'s request on ``target``, or None."""
    jobs = _jobs_of(target.client(), spec.request_id)
    if not jobs:
        return None
    return JobHandle(jobs[-1][1], spec, target, reattached=True)
