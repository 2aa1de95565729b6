"""The integration layer's own fixture tweaks (the shared fixtures are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def snowpark_session(snowpark_session):
    """The session's Snowpark session, closed with ``close_session``: it also unregisters the
    exit hook Snowpark registers for every session. ``Session.close()`` alone leaves the hook,
    which closes the session again when the interpreter exits and logs "Closed session" into
    pytest's streams, closed by then ("Logging error ... I/O operation on closed file")."""
    from shardtrain.integrations import close_session

    yield snowpark_session
    close_session(snowpark_session)
