"""SnowparkHook: Snowpark sessions from an Airflow Snowflake connection, closed after use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from airflow.sdk import BaseHook

from shardtrain.integrations import closing_session, local_testing_session


class SnowparkHook(BaseHook):
    """Opens Snowpark sessions from a ``snowflake`` connection.

    Credentials stay inside the session: nothing derived from the connection is logged,
    pushed to XCom or written into an artifact. A connection whose extra has
    ``"local_testing": true`` gives Snowpark's local emulation (for DAG development and tests
    without an account); any other goes through the Snowflake provider's ``SnowflakeHook``.
    """

    conn_name_attr = "snowflake_conn_id"
    default_conn_name = "snowflake_default"
    hook_name = "Snowpark session"

    def __init__(self, snowflake_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.snowflake_conn_id = snowflake_conn_id

    def get_session(self) -> Any:
        """A new Snowpark session; the caller closes it (or use ``session()``)."""
        conn = self.get_connection(self.snowflake_conn_id)
        if (conn.extra_dejson or {}).get("local_testing"):
            return local_testing_session()
        from airflow.providers.snowflake.hooks.snowflake import SnowflakeHook

        return SnowflakeHook(snowflake_conn_id=self.snowflake_conn_id).get_snowpark_session()

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """A Snowpark session for the ``with`` block, closed when it ends (also on failure)."""
        with closing_session(self.get_session()) as session:
            yield session


def optional_session(snowflake_conn_id: str | None) -> contextlib.AbstractContextManager:
    """``SnowparkHook(conn).session()``, or a context yielding None without a connection."""
    if not snowflake_conn_id:
        return contextlib.nullcontext()
    return SnowparkHook(snowflake_conn_id).session()
