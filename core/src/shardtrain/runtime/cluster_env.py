"""The environment the local Ray head (and its idle monitor) starts with: an allowlist.

The head is started by whichever process first needs it (an Airflow task, a Prefect task
run, a notebook) and lives on after it. Every raylet, job driver and worker process it
starts inherits the head's environment, so a head that inherited its starter's whole
environment would hand that one task's secrets (``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``,
``AIRFLOW__API_AUTH__JWT_SECRET``, ``PREFECT_API_KEY``) and its identity
(``AIRFLOW_CTX_DAG_ID``: the wrong one for every later job) to every later job. The head
gets only what Ray and the frameworks need, plus the names the user adds with
``SHARDTRAIN_CLUSTER_ENV_ALLOW``; an orchestrator's variables and secret-named variables
never pass, even when named there.

Example:
    >>> env = head_environment({"PATH": "/bin", "AIRFLOW_CTX_DAG_ID": "d", "X_TOKEN": "t"})
    >>> sorted(env)
    ['PATH']
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from shardtrain.errors import ConfigError
from shardtrain.secrets import is_secret_name

#: Single variables the head keeps: the user's and locale's, paths, CA bundles and proxies.
ALLOWED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TEMP",
        "TMP",
        "PYTHONPATH",
        "VIRTUAL_ENV",
        "LD_LIBRARY_PATH",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "all_proxy",
    }
)
#: Families the head keeps (secret-named members aside): Ray's own settings, thread counts
#: of the math libraries, GPUs, the collectives of PyTorch, XDG folders, locale, shardtrain's.
ALLOWED_PREFIXES = (
    "RAY_",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "CUDA_",
    "NVIDIA_",
    "NCCL_",
    "GLOO_",
    "XDG_",
    "LC_",
    "SHARDTRAIN_",
)
#: What a head never gets: an orchestrator's settings and task context.
FORBIDDEN_PREFIXES = ("AIRFLOW_", "AIRFLOW__", "PREFECT_")
#: Set per process by whoever joins the head, never by the process that started it.
_DROPPED = frozenset({"RAY_ADDRESS", "RAY_AUTH_TOKEN"})

#: ``scheme://user[:password]@``: a value that carries a login (a proxy's, a database URL).
_URL_USERINFO = re.compile(r"://[^/@\s]*@")


def forbidden(name: str) -> bool:
    """True for what the head never gets, allowlisted or not: an orchestrator's variables
    (``AIRFLOW_*``, ``AIRFLOW__*``, ``AIRFLOW_CTX_*``, ``PREFECT_*``) and secret-named ones
    (``shardtrain.secrets.is_secret_name``: the one rule for what counts as a credential)."""
    return name.upper().startswith(FORBIDDEN_PREFIXES) or is_secret_name(name)


def head_environment(environ: Mapping[str, str], allow: Iterable[str] = ()) -> dict[str, str]:
    """The part of ``environ`` the local Ray head starts with (a new dict; pure).

    Kept: ``ALLOWED_NAMES``, the ``ALLOWED_PREFIXES`` families and the names in ``allow``
    (``SHARDTRAIN_CLUSTER_ENV_ALLOW``). Never kept: ``RAY_ADDRESS`` and ``RAY_AUTH_TOKEN``
    (the head gets its own), an orchestrator's variables, secret-named variables, and any
    value with a login in a URL (``http://user:pw@proxy``).

    Raises:
        ConfigError: ``allow`` names a variable the head must never get. The head and
            every job on it outlive the task that starts it: credentials reach the cluster
            through its own environment or a connection, never through the first task's.
    """
    allow = [name.strip() for name in allow if name.strip()]
    refused = sorted({name for name in allow if forbidden(name)})
    if refused:
        raise ConfigError(
            f"SHARDTRAIN_CLUSTER_ENV_ALLOW names {refused}: the local Ray head never takes an "
            "orchestrator's variables (AIRFLOW_*, PREFECT_*) or secret-named ones from the "
            "process that happens to start it, because every later job on the head would see "
            "them. Give the cluster its credentials through its own environment or a "
            "connection (an Airflow connection, a Prefect block, a named Snowflake "
            "connection), and take the names out of SHARDTRAIN_CLUSTER_ENV_ALLOW.",
            variable="SHARDTRAIN_CLUSTER_ENV_ALLOW",
            names=refused,
        )
    extra = set(allow)
    kept = {}
    for name, value in environ.items():
        if name in _DROPPED or forbidden(name) or _URL_USERINFO.search(value):
            continue
        if name in ALLOWED_NAMES or name in extra or name.startswith(ALLOWED_PREFIXES):
            kept[name] = value
    return kept
