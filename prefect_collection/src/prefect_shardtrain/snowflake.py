"""Snowpark sessions from prefect-snowflake's blocks, with every auth method they offer.

``SnowflakeCredentials`` supports password, key pair (``private_key`` or
``private_key_path``, with ``private_key_passphrase``), OAuth / JWT ``token``, Okta
``endpoint``, external browser, MFA and workload identity. ``snowpark_configs`` translates
them the way prefect-snowflake's own ``get_client`` does, so a Snowpark session authenticates
exactly as the block's connector connection would; ``SnowflakeConnector`` adds its
warehouse, database and schema.
"""

from __future__ import annotations

from typing import Any

from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials
from pydantic import SecretBytes, SecretStr

from shardtrain.integrations import session_from_configs

#: Block fields that are not connector parameters (resolved into ``private_key`` instead).
_NOT_CONNECT_PARAMS = {"block_type_slug", "private_key_path", "private_key_passphrase"}


def snowpark_configs(block: SnowflakeCredentials | SnowflakeConnector) -> dict[str, Any]:
    """The parameters handed to ``Session.builder.configs(...)`` for ``block``.

    A key pair becomes ``private_key`` (DER bytes, decrypted with the passphrase), which the
    Snowflake connector authenticates with as ``SNOWFLAKE_JWT``. Secrets are revealed only
    into this dict, which goes straight to Snowpark.
    """
    if isinstance(block, SnowflakeConnector):
        extra = {"database": block.database, "warehouse": block.warehouse, "schema": block.schema_}
        credentials = block.credentials
    elif isinstance(block, SnowflakeCredentials):
        extra, credentials = {}, block
    else:
        raise TypeError(
            "expected a prefect-snowflake SnowflakeCredentials or SnowflakeConnector block, got "
            f"{type(block).__name__}."
        )
    configs: dict[str, Any] = {}
    for key, value in credentials.model_dump(exclude_unset=True).items():
        if key in _NOT_CONNECT_PARAMS or value is None:
            continue
        if isinstance(value, SecretStr | SecretBytes):
            value = value.get_secret_value()
        configs[key] = value
    if configs.get("authenticator") == "okta_endpoint":
        configs["authenticator"] = configs.pop("endpoint")
    private_key = credentials.resolve_private_key()
    if private_key is not None:
        configs["private_key"] = private_key
        configs.pop("password", None)  # the passphrase, in prefect-snowflake's legacy form
    configs.update({k: v for k, v in extra.items() if v is not None})
    return configs


def open_snowpark_session(
    block: SnowflakeCredentials | SnowflakeConnector, *, local_testing: bool = False
) -> Any:
    """A Snowpark session authenticated by ``block`` (Snowpark's local emulation when
    ``local_testing``); the caller closes it."""
    configs = snowpark_configs(block)
    if local_testing:
        configs["local_testing"] = True
    return session_from_configs(configs)
