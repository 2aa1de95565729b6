"""Blocks: which Ray cluster to train on, and which stage models go to."""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from prefect.types import SecretDict
from prefect_snowflake import SnowflakeCredentials
from pydantic import Field


class RayCluster(Block):
    """A Ray cluster (none configured: the embedded local Ray, or ``RAY_ADDRESS``)."""

    _block_type_name = "Shardtrain Ray Cluster"
    _description = "The Ray cluster shardtrain trains on."

    address: str | None = Field(default=None, description="ray://head:10001, head:6379 or auto")
    namespace: str | None = None
    runtime_env: dict[str, Any] | None = None

    def connect(self) -> None:
        from shardtrain.runtime.cluster import connect

        connect(self.address, namespace=self.namespace, runtime_env=self.runtime_env)


class ModelStage(Block):
    """Where trained models are published: a stage URI, with what it takes to reach it.

    ``snowflake_credentials`` (prefect-snowflake's block) open a Snowpark session for
    ``@DB.SCHEMA.STAGE`` locations and Snowflake tables; ``local_testing`` uses Snowpark's
    local emulation instead (for flow development). ``storage_options`` are fsspec options
    for s3:// and other URLs; they are secrets and never reach a result or a log.
    """

    _block_type_name = "Shardtrain Model Stage"
    _description = "Where shardtrain publishes trained models."

    uri: str | None = Field(default=None, description="None: $SHARDTRAIN_HOME/stage")
    snowflake_credentials: SnowflakeCredentials | None = None
    local_testing: bool = False
    storage_options: SecretDict | None = None

    def session(self) -> Any:
        """A Snowpark session, or None when no Snowflake is configured."""
        from snowflake.snowpark import Session

        if self.local_testing:
            return Session.builder.config("local_testing", True).create()
        creds = self.snowflake_credentials
        if creds is None:
            return None
        config = {
            "account": creds.account,
            "user": creds.user,
            "role": creds.role,
            "authenticator": creds.authenticator,
        }
        if creds.password is not None:
            config["password"] = creds.password.get_secret_value()
        if creds.token is not None:
            config["token"] = creds.token.get_secret_value()
        return Session.builder.configs({k: v for k, v in config.items() if v}).create()

    def options(self) -> dict[str, Any] | None:
        return self.storage_options.get_secret_value() if self.storage_options else None
