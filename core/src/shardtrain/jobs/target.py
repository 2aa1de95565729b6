"""Where Ray Jobs go: a Ray job server (the dashboard's HTTP address) and how to reach it.

A ``JobTarget`` is plain data: the address, the runtime environment every job gets, and the
``python`` that runs the entrypoint on the cluster. Request headers (an auth token) are kept
out of its ``repr`` so that logging a target never shows them.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shardtrain.errors import ConfigError, JobServerError
from shardtrain.runtime import local_cluster
from shardtrain.secrets import redact_text, refuse_secrets

_RUNTIME_ENV_KEYS = ("pip", "uv", "conda", "working_dir", "py_modules", "env_vars", "excludes")


@dataclass(frozen=True, kw_only=True)
class JobTarget:
    """A Ray job server and what every job submitted to it gets.

    Args:
        address: the job server, e.g. ``http://head:8265`` (Ray's dashboard port).
        runtime_env: Ray runtime environment of the job (``pip``, ``working_dir``,
            ``env_vars``...). Never put credentials in it: the dashboard shows it.
        python: the interpreter that runs ``-m shardtrain.jobs`` on the cluster (``python``
            on the cluster's PATH by default).
        headers: HTTP headers for the job server (e.g. an auth token); not shown in repr.
        entrypoint_num_cpus: CPUs reserved for the job's driver (default 0: the driver only
            coordinates; the training workers reserve their own).

    Example:
        >>> JobTarget(address="http://ray-head:8265", runtime_env={"pip": ["shardtrain"]})
        JobTarget(address='http://ray-head:8265', runtime_env={'pip': ['shardtrain']}, python='python', entrypoint_num_cpus=None, is_local=False)
    """

    address: str
    runtime_env: Mapping[str, Any] = field(default_factory=dict)
    python: str = "python"
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    entrypoint_num_cpus: float | None = None
    #: True for this machine's long-lived local cluster (it shares this machine's files).
    is_local: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not re.match(r"^https?://[^/\s]+", self.address):
            shown = redact_text(self.address) if isinstance(self.address, str) else self.address
            raise ConfigError(
                f"a Ray job server address looks like 'http://head:8265' (the dashboard's "
                f"address), got {shown!r}."
            )
        object.__setattr__(self, "address", self.address.rstrip("/"))
        if not isinstance(self.runtime_env, Mapping):
            raise ConfigError(f"runtime_env must be a dict, got {type(self.runtime_env).__name__}.")
        unknown = sorted(set(self.runtime_env) - set(_RUNTIME_ENV_KEYS))
        if unknown:
            raise ConfigError(
                f"runtime_env keys {unknown} are not supported for jobs; use "
                f"{list(_RUNTIME_ENV_KEYS)}."
            )
        # The job server shows a job's runtime_env (env_vars, pip URLs, working_dir) to
        # anyone who can open the dashboard: credentials come from the cluster's side.
        refuse_secrets(self.runtime_env, "runtime_env")
        if not isinstance(self.python, str) or not self.python.strip():
            raise ConfigError(f"python must be an interpreter name or path, got {self.python!r}.")

    @classmethod
    def local(cls, *, runtime_env: Mapping[str, Any] | None = None) -> JobTarget:
        """The long-lived local cluster's job server (started when none is running)."""
        cluster = local_cluster.ensure()
        return cls(
            address=cluster.dashboard_url,
            runtime_env=dict(runtime_env or {}),
            python=sys.executable,  # same machine: the interpreter that has shardtrain
            headers=cluster.auth_headers(),
            is_local=True,
        )

    @property
    def shown_address(self) -> str:
        """The address as messages, logs and links show it: without URL user info."""
        return redact_text(self.address)

    def dashboard_link(self, submission_id: str) -> str:
        """The job's page in the Ray dashboard."""
        return f"{self.shown_address}/#/jobs/{submission_id}"

    def client(self):
        """A ``JobSubmissionClient`` for this server; ``JobServerError`` when none answers."""
        from ray.job_submission import JobSubmissionClient  # ray[default]: the job client

        try:
            return JobSubmissionClient(self.address, headers=dict(self.headers) or None)
        except Exception as exc:  # requests' ConnectionError, Ray's RuntimeError, ...
            raise JobServerError(
                f"no Ray job server answers at {redact_text(self.address)} "
                f"({type(exc).__name__}: {redact_text(_first_line(exc))}). Check that the "
                "cluster is up and that the address is its dashboard address (port 8265 by "
                "default), not the Ray Client or GCS port.",
                address=redact_text(self.address),
            ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
