"""The multi-host rig (``tests.rig``), started once for the module that asks for it."""

from __future__ import annotations

import pytest

from tests.rig import Rig, why_not


@pytest.fixture(scope="module")
def rig():
    """Network namespaces on a bridge: a Ray head (0 CPUs), two 1-CPU worker hosts, moto's S3
    and an orchestrator host; removed when the module's tests end, fail or are interrupted.
    Skips, saying why, where namespaces cannot be made (not root)."""
    reason = why_not()
    if reason:
        pytest.skip(f"no multi-host rig here: {reason}")
    made = Rig(fast_failure_detection=True)
    try:
        yield made.start()
    finally:
        made.close()
