"""Blocks: which Ray cluster to train on, and which stage models go to.

Field layout: a ``ModelStage`` says where models are published and what it takes to reach
that place (Snowflake credentials for a ``@DB.SCHEMA.STAGE``, fsspec options for a URL).
Reading Snowflake *data* is the tasks' ``snowflake=`` block (a prefect-snowflake
``SnowflakeConnector`` or ``SnowflakeCredentials``); only when a task is given none does it
read tables and queries through the stage's credentials, as earlier versions always did.
"""

import contextlib
from collections.abc import Iterator
from typing import Any

from prefect.blocks.core import Block
from prefect.types import SecretDict
from pydantic import Field, SecretStr

from shardtrain.errors import ConfigError
from shardtrain.integrations import (
    closing_session,
    connect_ray,
    is_snowflake_stage,
    session_from_configs,
)
from shardtrain.jobs import JobTarget

try:  # the `snowflake` extra (prefect-snowflake); without it a stage has no Snowflake login
    from prefect_snowflake import SnowflakeCredentials
except ImportError:
    SnowflakeCredentials = Any

DOCS = "https://github.com/shardtrain/shardtrain/tree/main/prefect_collection#readme"


class RayCluster(Block):
    """A Ray cluster (none configured: the embedded local Ray, or ``RAY_ADDRESS``).

    Example:
        ```python
        from prefect_shardtrain import RayCluster

        ray_cluster = RayCluster.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Shardtrain Ray Cluster"
    _description = "The Ray cluster shardtrain trains on."
    _documentation_url = DOCS

    address: str | None = Field(
        default=None,
        description="Ray address: ray://head:10001, head:6379 or auto (none: a local Ray).",
    )
    namespace: str | None = Field(default=None, description="Ray namespace for the actors.")
    runtime_env: dict[str, Any] | None = Field(
        default=None, description="Ray runtime environment (pip packages, env vars)."
    )
    job_server: str | None = Field(
        default=None,
        description="The head's job server (dashboard) address, e.g. http://ray-head:8265: "
        "training tasks run as Ray Jobs there and reattach to them on retry.",
    )
    job_server_token: SecretStr | None = Field(
        default=None, description="Auth token of the job server, if it has token auth."
    )
    use_jobs: bool | None = Field(
        default=None,
        description="Run training as Ray Jobs (default: when job_server is set). With no "
        "job_server, jobs go to this machine's long-lived local cluster.",
    )
    python: str = Field(default="python", description="Interpreter that runs jobs on the cluster.")
    snowflake_connection: str | None = Field(
        default=None,
        description="Name of a Snowflake connection in the cluster's connections.toml: jobs "
        "read Snowflake data with it (no credential travels with a job).",
    )

    def connect(self) -> None:
        """Connect this process to the cluster (no-op when already connected)."""
        connect_ray(self.address, namespace=self.namespace, runtime_env=self.runtime_env)

    def uses_jobs(self) -> bool:
        """Whether training goes through Ray Jobs (``use_jobs``, else: a job server is set)."""
        return bool(self.job_server) if self.use_jobs is None else self.use_jobs

    def job_target(self) -> JobTarget:
        """Where this cluster's jobs go: ``job_server``, else this machine's local cluster."""
        if self.job_server:
            token = self.job_server_token.get_secret_value() if self.job_server_token else None
            return JobTarget(
                address=self.job_server,
                runtime_env=self.runtime_env or {},
                python=self.python,
                headers={"Authorization": f"Bearer {token}"} if token else {},
            )
        if self.address:
            raise ConfigError(
                "this RayCluster names an address but no job_server: set job_server (the "
                "head's dashboard address, e.g. http://ray-head:8265) to run training as Ray "
                "Jobs."
            )
        return JobTarget.local(runtime_env=self.runtime_env)


class ModelStage(Block):
    """Where trained models are published: a stage URI, with what it takes to reach it.

    ``snowflake_credentials`` (prefect-snowflake's block, any of its auth methods: password,
    key pair, OAuth token, Okta, ...) open the Snowpark session for a ``@DB.SCHEMA.STAGE``
    location; ``local_testing`` runs that session on Snowpark's local emulation instead (for
    flow development). ``storage_options`` are fsspec options for s3:// and other URLs; they
    are secrets and never reach a result or a log.

    Example:
        ```python
        from prefect_shardtrain import ModelStage

        stage = ModelStage.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Shardtrain Model Stage"
    _description = "Where shardtrain publishes trained models."
    _documentation_url = DOCS

    uri: str | None = Field(
        default=None,
        description="Stage location: @DB.SCHEMA.STAGE, s3://..., a path (none: "
        "$SHARDTRAIN_HOME/stage).",
    )
    snowflake_credentials: SnowflakeCredentials | None = Field(
        default=None, description="Snowflake credentials for a Snowflake stage."
    )
    local_testing: bool = Field(
        default=False, description="Use Snowpark's local emulation instead of an account."
    )
    storage_options: SecretDict | None = Field(
        default=None, description="fsspec options (endpoint, credentials) for stage URLs."
    )

    @property
    def has_snowflake(self) -> bool:
        """True when this block can open a Snowpark session."""
        return self.local_testing or self.snowflake_credentials is not None

    def snowpark_configs(self) -> dict[str, Any] | None:
        """What ``Session.builder.configs`` receives (None: no Snowflake configured)."""
        if not self.has_snowflake:
            return None
        from prefect_shardtrain.snowflake import snowpark_configs

        configs = snowpark_configs(self.snowflake_credentials) if self.snowflake_credentials else {}
        if self.local_testing:
            configs["local_testing"] = True
        return configs

    def session(self) -> Any:
        """A new Snowpark session, or None when no Snowflake is configured; the caller closes
        it (``open_session()`` does)."""
        configs = self.snowpark_configs()
        return None if configs is None else session_from_configs(configs)

    @contextlib.contextmanager
    def open_session(self) -> Iterator[Any]:
        """``session()`` for a ``with`` block, closed when it ends (also on failure)."""
        with closing_session(self.session()) as session:
            yield session

    @property
    def needs_session(self) -> bool:
        """True when the stage is a Snowflake stage."""
        return is_snowflake_stage(self.uri)

    def options(self) -> dict[str, Any] | None:
        return self.storage_options.get_secret_value() if self.storage_options else None
