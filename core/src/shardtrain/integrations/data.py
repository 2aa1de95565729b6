"""Data specs to DataConnectors: a Parquet path/URL, a Snowflake table or a SQL query, named
the way orchestrators and Ray Jobs pass them. One reader, so every caller reads data alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shardtrain.data import DataConnector
from shardtrain.errors import ConfigError
from shardtrain.integrations.spec import DataSpec


def connector_from_spec(
    spec: DataSpec | str | Mapping[str, Any] | DataConnector | None,
    *,
    session: Any = None,
    storage_options: dict[str, Any] | None = None,
    name: str = "training",
) -> DataConnector | None:
    """A DataConnector for ``spec`` (None for no data); a DataConnector passes through.

    Tables and queries need a Snowpark ``session``; ``storage_options`` reach Parquet URLs.
    """
    if spec is None or isinstance(spec, DataConnector):
        return spec
    data = DataSpec.parse(spec, name=name)
    if data is None:
        return None
    if data.kind == "path":
        return DataConnector.from_parquet(data.value, storage_options=storage_options)
    if session is None:
        raise ConfigError(
            f"the {name} data is a Snowflake {data.kind}, which needs a Snowpark session: pass "
            "one, or name a Snowflake connection (snowflake_connection) to open it from."
        )
    if data.kind == "table":
        return DataConnector.from_dataframe(session.table(data.value))
    return DataConnector.from_sql(data.value, session=session)
