"""One error base for the whole library.

Every error says what is wrong and what to do about it. Subclasses carry structured data
(the column that is missing, the columns that exist) as attributes, and all of them pickle,
because they are raised inside Ray workers and re-raised on the driver.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

_URL_USERINFO = re.compile(r"(?<=://)[^/@\s'\"]*@")


def redact_url(text: str) -> str:
    """``text`` with the ``user:password@`` of every URL in it removed (``s3://K:S@b/x`` ->
    ``s3://b/x``): what a URI looks like wherever it is stored, logged or raised."""
    return _URL_USERINFO.sub("", str(text))


def scrub(text: Any, *urls: str) -> str:
    """``text`` (an error message, say) with URLs redacted and every credential embedded in
    ``urls`` masked, also where a library quoted it without its URL."""
    text = redact_url(str(text))
    secrets: set[str] = set()
    for url in urls:
        for match in _URL_USERINFO.finditer(str(url)):
            userinfo = match.group(0)[:-1]
            for part in (userinfo, *userinfo.split(":", 1)):
                secrets |= {part, unquote(part)}
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _rebuild(cls: type[ShardtrainError], message: str, details: dict[str, Any]) -> ShardtrainError:
    error = cls.__new__(cls)
    ShardtrainError.__init__(error, message, **details)
    return error


class ShardtrainError(Exception):
    """Base class of every error shardtrain raises on purpose.

    Keyword arguments become attributes (``error.column``) and survive pickling.
    """

    message: str
    details: dict[str, Any]
    # Declared for type checkers only (no class default): set where a worker raised the error,
    # the worker group tagging it with the rank it came from.
    rank: int | None

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        for key, value in details.items():
            setattr(self, key, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.details))

    def __str__(self) -> str:
        return self.message


class DataSourceError(ShardtrainError, ValueError):
    """The data cannot be read: unknown kind of source, missing path, unreadable files."""


class EmptyDataError(DataSourceError):
    """The data (or one shard of it) holds no rows."""


class SchemaError(ShardtrainError, ValueError):
    """A column is missing, duplicated, or of a type the consumer cannot use.

    Attributes: ``column`` (the offending name) and ``available`` (the columns that exist).
    """


class ConfigError(ShardtrainError, ValueError):
    """An argument or configuration value is impossible (batch size 0, world size 0, ...)."""


class MissingDependencyError(ShardtrainError, ImportError):
    """An optional library is not installed. Attributes: ``module`` (its import name),
    ``package`` (what to pip install) and ``extra`` (the shardtrain extra that provides it)."""


class ClusterError(ShardtrainError, ConnectionError):
    """Ray cannot be reached or started at the given address."""


class JobServerError(ClusterError):
    """No Ray job server answers at the address, or it refused a request."""


class StageError(ShardtrainError, ValueError):
    """A stage location is malformed, unknown, unreachable, or a path on it is unsafe."""


class ModelIntegrityError(StageError):
    """A published location is not a whole model: no manifest, or files that do not match it."""


class PublishConflictError(StageError):
    """Another publish of the same request id replaced this one before it finished (last
    writer wins). Attributes: ``uri`` and ``winner`` (the attempt folder now published)."""


class ScalingConfigError(ConfigError):
    """A scaling configuration the cluster cannot satisfy; the message says what it has."""


class MemoryBudgetError(ScalingConfigError):
    """A rank's shard does not fit its per-worker memory budget and cannot be streamed (or
    needs more than the budget even streamed). Attributes: ``rank``, ``rows``, ``needed``
    and ``budget`` (bytes), ``streaming`` (whether ``needed`` is the streaming need)."""


class WorkerError(ShardtrainError, RuntimeError):
    """A worker failed. Attributes: ``rank`` and ``worker_traceback`` (the original one)."""

    worker_traceback: str
    round: int  # the round (step) it failed at, once the run has said so


class WorkerDiedError(WorkerError):
    """A worker process died (killed, out of memory, node lost): the group may be rebuilt."""


class NotFittedError(ShardtrainError, RuntimeError):
    """A result was asked for (booster, artifact) before ``fit`` produced it."""


class OutsideWorkerError(ShardtrainError, RuntimeError):
    """A worker-only call (``get_context()``, ``get_shard()``) was made outside a worker."""


class JobError(ShardtrainError, RuntimeError):
    """A training job did not succeed. Attributes: ``submission_id``, ``status``,
    ``log_tail`` (its last log lines)."""


class JobFailedError(JobError):
    """The job ran and failed; the message carries the last lines of its log."""


class JobStoppedError(JobError):
    """The job was stopped before it finished (cancelled, or stopped from outside)."""


class PartitionError(ShardtrainError, RuntimeError):
    """Many-model training: a partition did not produce a model (its train function raised or
    returned nothing), or its model was asked for. Attributes: ``partition_id``, ``run_id``
    and ``worker_traceback`` (the original traceback, where there is one)."""


class NoModelReturnedError(PartitionError):
    """A many-model train function returned None instead of the model it trained."""


class SearchSpaceError(ConfigError):
    """Tuner: a search space (or its pairing with the search algorithm) that is not valid.
    Attribute: ``param`` (the hyperparameter it is about, where there is one)."""


class TuneError(ShardtrainError, RuntimeError):
    """Tuner: no trial produced a result. Attributes: ``trial_id`` and ``worker_traceback``
    of the first failed trial, where one failed."""


class MetricNotReportedError(TuneError):
    """Tuner: a trial's ``report()`` lacks the metric the ``TunerConfig`` optimises.
    Attributes: ``metric`` and ``reported`` (the names it did report)."""


def missing_columns_error(missing: list[str], available: list[str]) -> SchemaError:
    """The one message for 'these columns are not there', shared by every consumer."""
    names = ", ".join(repr(c) for c in missing)
    plural = "s" if len(missing) > 1 else ""
    return SchemaError(
        f"column{plural} {names} not found in the data; available columns: {available}. "
        "Check the spelling and case (Snowflake upper-cases unquoted identifiers).",
        column=missing[0],
        missing=list(missing),
        available=list(available),
    )
