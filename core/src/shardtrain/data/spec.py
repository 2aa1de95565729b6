"""Training data named the way orchestrators pass it: a Parquet path/URL, or one of
``{'table': ...}``, ``{'query': ...}``, ``{'path': ...}``. Shared by the Airflow operators and
the Prefect tasks so both read data the same way."""

from __future__ import annotations

from typing import Any

from shardtrain.data.data_connector import DataConnector
from shardtrain.errors import ConfigError

DATA_KINDS = ("table", "query", "path")


def connector_from_spec(
    spec: str | dict[str, Any] | DataConnector | None,
    *,
    session: Any = None,
    storage_options: dict[str, Any] | None = None,
    name: str = "training",
) -> DataConnector | None:
    """A DataConnector for ``spec`` (None for no data)."""
    if spec is None or isinstance(spec, DataConnector):
        return spec
    if isinstance(spec, str):
        spec = {"path": spec}
    given = {k: v for k, v in spec.items() if k in DATA_KINDS and v}
    if not given:
        return None
    if len(given) > 1:
        raise ConfigError(
            f"give one of table, query or path for the {name} data, not {sorted(given)}."
        )
    kind, value = next(iter(given.items()))
    if kind == "path":
        return DataConnector.from_parquet(value, storage_options=storage_options)
    if session is None:
        raise ConfigError(
            f"the {name} data is a Snowflake {kind}, which needs a Snowpark session: set "
            "snowflake_conn_id (Airflow) or a ModelStage with snowflake_credentials (Prefect)."
        )
    if kind == "table":
        return DataConnector.from_dataframe(session.table(value))
    return DataConnector.from_sql(value, session=session)
