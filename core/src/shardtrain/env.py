"""Every environment variable shardtrain reads, declared once: name, default, meaning.

Each knob is read when it is used (``KNOB.get()``), never at import, so a test or a worker
that sets a variable sees it take effect. A value that does not parse raises ``ConfigError``
naming the variable.

Example:
    >>> WORKER_IDLE_S.get()  # doctest: +SKIP
    60.0
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shardtrain.errors import ConfigError


@dataclass(frozen=True)
class Knob:
    """One environment variable: ``get()`` returns ``parse(value)``, or ``default`` when unset
    or empty."""

    name: str
    default: Any
    doc: str
    parse: Callable[[str], Any] = str

    def get(self) -> Any:
        raw = os.environ.get(self.name)
        if raw is None or raw.strip() == "":
            return self.default
        try:
            return self.parse(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"environment variable {self.name}={raw!r} is not valid ({exc}); {self.doc}",
                variable=self.name,
            ) from exc


def _choice(value: str, choices: tuple[str, ...]) -> str:
    value = value.strip().lower()
    if value not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}")
    return value


HOME = Knob(
    "SHARDTRAIN_HOME",
    None,
    "the folder for the embedded defaults (stage, registry, demo data); default ~/.shardtrain.",
)
SHARD_CACHE_MB = Knob(
    "SHARDTRAIN_SHARD_CACHE_MB",
    1024.0,
    "MiB of an XGBoost shard (float32 features + label) kept in memory for the second pass "
    "over the data; a larger shard is streamed on every pass.",
    float,
)
WORKER_IDLE_S = Knob(
    "SHARDTRAIN_WORKER_IDLE_S",
    60.0,
    "seconds a warm worker group stays alive between fits (of any driver: the pool lives on "
    "the cluster) before it is shut down.",
    float,
)
WORKER_LEASE_TIMEOUT_S = Knob(
    "SHARDTRAIN_WORKER_LEASE_TIMEOUT_S",
    20.0,
    "seconds the cluster's worker pool keeps a leased worker group whose driver stopped "
    "renewing the lease (it died mid-fit) before it kills the group and frees its resources.",
    float,
)
PLACEMENT_TIMEOUT_S = Knob(
    "SHARDTRAIN_PLACEMENT_TIMEOUT_S",
    30.0,
    "seconds to wait for the cluster to place a worker group before refusing the request.",
    float,
)

CLUSTER = Knob(
    "SHARDTRAIN_CLUSTER",
    "local",
    "which Ray to use when no address is given (no argument, no RAY_ADDRESS): 'local' joins "
    "the machine's long-lived local head under $SHARDTRAIN_HOME/cluster, starting it when "
    "none runs; 'private' starts a Ray inside this process that stops with it.",
    lambda v: _choice(v, ("local", "private")),
)
CLUSTER_IDLE_S = Knob(
    "SHARDTRAIN_CLUSTER_IDLE_S",
    1800.0,
    "seconds the local head stays up with no running job and no connected driver before it "
    "stops itself (read when the head starts).",
    float,
)
CLUSTER_NUM_CPUS = Knob(
    "SHARDTRAIN_CLUSTER_NUM_CPUS",
    None,
    "CPUs the local head offers to Ray (read when it starts); default: the machine's CPUs.",
    int,
)
CLUSTER_START_TIMEOUT_S = Knob(
    "SHARDTRAIN_CLUSTER_START_TIMEOUT_S",
    120.0,
    "seconds to wait for the local head to start, or for another process starting it.",
    float,
)
CLUSTER_ENV_ALLOW = Knob(
    "SHARDTRAIN_CLUSTER_ENV_ALLOW",
    (),
    "comma-separated names of further environment variables the local head (and so every "
    "Ray job and worker on it) takes from the process that starts it, e.g. "
    "'AWS_REGION,MY_SETTING' (read when the head starts). The head starts from an allowlist "
    "(PATH, HOME, locale, TMPDIR, PYTHONPATH, VIRTUAL_ENV, RAY_*, thread settings, CUDA_*, "
    "SHARDTRAIN_*...: runtime.cluster_env), because the head outlives the task that starts "
    "it; AIRFLOW_*, PREFECT_* and secret-named variables are refused even when named here.",
    lambda v: tuple(name.strip() for name in v.split(",") if name.strip()),
)
EXTMEM_DIR = Knob(
    "SHARDTRAIN_EXTMEM_DIR",
    None,
    "the folder on each worker's local disk where XGBoost's external-memory cache pages go "
    "(one subfolder per fit and rank, removed after the fit); default: "
    "<system temp dir>/shardtrain-extmem. Read on the driver when set, else on each worker.",
)

#: Every knob, for documentation and ``shardtrain`` tooling.
KNOBS: tuple[Knob, ...] = (
    HOME,
    SHARD_CACHE_MB,
    WORKER_IDLE_S,
    WORKER_LEASE_TIMEOUT_S,
    PLACEMENT_TIMEOUT_S,
    CLUSTER,
    CLUSTER_IDLE_S,
    CLUSTER_NUM_CPUS,
    CLUSTER_START_TIMEOUT_S,
    CLUSTER_ENV_ALLOW,
    EXTMEM_DIR,
)
