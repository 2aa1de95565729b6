"""Real Prefect for the collection tests: `prefect_test_harness` (a temporary local API
server and database), started once per session."""

from __future__ import annotations

import os

import pytest

from tests.helpers import temp_folder

# Prefect reads these when it is first imported: set them before any test module imports it.
if "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = temp_folder("prefect-home-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.3")


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def api(prefect_harness):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        yield client
