"""Snowpark sessions for integrations: Snowpark's local emulation, a session from a named
Snowflake connection, and closing what a caller opened.

A session holds its credentials; nothing here logs or returns them. Opening a session is lazy
about Snowpark, an optional dependency.
"""

from __future__ import annotations

import atexit
import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from shardtrain.errors import ConfigError


def _session_class():
    try:
        from snowflake.snowpark import Session
    except ImportError as exc:
        raise ConfigError(
            "Snowflake data and stages need snowflake-snowpark-python: install "
            "shardtrain[snowflake]."
        ) from exc
    return Session


def local_testing_session() -> Any:
    """A Snowpark session on Snowpark's local emulation (no account; for development and
    tests)."""
    return _session_class().builder.config("local_testing", True).create()


def session_from_configs(configs: Mapping[str, Any]) -> Any:
    """A Snowpark session from connection parameters (``Session.builder.configs``); with a
    true ``local_testing`` entry, Snowpark's local emulation receives the same parameters."""
    return _session_class().builder.configs(dict(configs)).create()


def connection_names() -> list[str]:
    """The Snowflake connections known here (``connections.toml`` or the
    ``SNOWFLAKE_CONNECTIONS`` variable): names only."""
    from snowflake.connector.config_manager import CONFIG_MANAGER

    return sorted(CONFIG_MANAGER["connections"])


def session_from_connection(name: str) -> Any:
    """A Snowpark session from the Snowflake connection ``name`` (``connections.toml`` in
    ``$SNOWFLAKE_HOME``, or ``SNOWFLAKE_CONNECTIONS``), opened by Snowpark's own
    ``connection_name`` support. A connection with ``local_testing = true`` gives Snowpark's
    local emulation (for development and tests without an account)."""
    _session_class()
    from snowflake.connector.config_manager import CONFIG_MANAGER

    connections = CONFIG_MANAGER["connections"]
    if name not in connections:
        raise ConfigError(
            f"no Snowflake connection named {name!r} here; known connections: "
            f"{sorted(connections)}. Add it to connections.toml in $SNOWFLAKE_HOME (default "
            "~/.snowflake) on the machine that runs the training.",
            connection=name,
        )
    if connections[name].get("local_testing"):
        return local_testing_session()
    return _session_class().builder.config("connection_name", name).create()


def close_session(session: Any) -> None:
    """Close ``session`` (None is fine); a failure to close never hides the run's result."""
    if session is None:
        return
    with contextlib.suppress(Exception):
        session.close()
    # Snowpark registers an exit hook per session, which would hold a closed session until
    # the process ends (and close it again then, logging into streams already closed).
    at_exit = getattr(session, "_close_at_exit", None)
    if at_exit is not None:
        atexit.unregister(at_exit)


@contextlib.contextmanager
def closing_session(session: Any) -> Iterator[Any]:
    """Yield ``session`` and close it afterwards, whatever happened."""
    try:
        yield session
    finally:
        close_session(session)
