"""Ray Jobs: run a ``TrainingSpec`` on a cluster's job server and get its ``ModelArtifact``.

>>> handle = submit(spec, JobTarget(address="http://head:8265"))      # doctest: +SKIP
>>> handle.wait(on_log=print)                                         # doctest: +SKIP
>>> artifact = handle.result()                                        # doctest: +SKIP

The submission id derives from the spec's request id, so submitting the same request again
reattaches to its job. No orchestrator is imported here: the Airflow operators and Prefect
tasks call this module.
"""

from shardtrain.errors import JobError, JobFailedError, JobServerError, JobStoppedError
from shardtrain.jobs.handle import (
    FAILED,
    PENDING,
    RUNNING,
    STOPPED,
    SUCCEEDED,
    TERMINAL,
    JobHandle,
    read_published,
)
from shardtrain.jobs.submit import find, submission_id, submit
from shardtrain.jobs.target import JobTarget

__all__ = [
    "FAILED",
    "PENDING",
    "RUNNING",
    "STOPPED",
    "SUCCEEDED",
    "TERMINAL",
    "JobError",
    "JobFailedError",
    "JobHandle",
    "JobServerError",
    "JobStoppedError",
    "JobTarget",
    "find",
    "read_published",
    "submission_id",
    "submit",
]
