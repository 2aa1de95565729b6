"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/test_readme.py.]

Every Python block of the README imports and builds (docs that cannot drift).

Each block: every import runs, and no name is used that the block does not define except
the reader's own objects named in ``PLACEHOLDERS`` (ruff's undefined-name check, F821).
The Airflow and Prefect blocks run whole: the DAG is built with every operator (a name
missing from an import is a NameError here, as it was for ``RegisterModelOperator``) and
the flow is defined.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
#: Objects the reader brings (a Snowpark session, a published artifact): never defined in a block.
PLACEHOLDERS = {"session", "artifact"}


def _block(marker: str) -> str:
    found = [b for b in BLOCKS if marker in b]
    assert len(found) == 1, f"expected one README block with {marker!r}, found {len(found)}"
    return found[0]


def test_the_readme_has_its_python_blocks():
    assert len(BLOCKS) >= 8


def test_the_prefect_block_defines_its_flow():
    namespace: dict = {"__name__": "readme_prefect"}  # not __main__: nothing is served
    exec(compile(_block("from prefect import flow"), "README", "exec"), namespace)
    flow = namespace["nightly_training"]
    assert flow.retries == 1
    assert set(flow.parameters.properties) == {"day"}
