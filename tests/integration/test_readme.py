"""Every Python block of the README imports and builds (docs that cannot drift).

Each block: every import runs, and no name is used that the block does not define except
the reader's own objects named in ``PLACEHOLDERS`` (ruff's undefined-name check, F821).
The Airflow and Prefect blocks run whole: the DAG is built with every operator (a name
missing from an import is a NameError here, as it was for ``RegisterModelOperator``) and
the flow is defined.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_readme import _block

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
#: Objects the reader brings (a Snowpark session, a published artifact): never defined in a block.
PLACEHOLDERS = {"session", "artifact"}


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_block_imports_and_names_only_what_it_defines(index, tmp_path):
    code = BLOCKS[index]
    tree = ast.parse(code)
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    namespace: dict = {}
    exec(compile(ast.Module(body=imports, type_ignores=[]), "README", "exec"), namespace)
    path = tmp_path / f"block{index}.py"
    path.write_text(code)
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F821",
         "--output-format", "concise", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    undefined = set(re.findall(r"Undefined name `(\w+)`", lint.stdout))
    assert undefined <= PLACEHOLDERS, (undefined - PLACEHOLDERS, code)


def test_the_airflow_block_builds_its_dag():
    namespace: dict = {"__name__": "readme_airflow"}
    exec(compile(_block("from airflow.sdk import DAG"), "README", "exec"), namespace)
    from airflow.sdk import DAG

    dags = [v for v in namespace.values() if isinstance(v, DAG)]
    if not dags:  # `with DAG(...):` without `as`: the DAG is the operators' dag
        dags = [namespace["xgb"].dag]
    assert set(dags[0].task_dict) == {
        "train_xgboost",
        "train_lightgbm",
        "train_pytorch",
        "evaluate",
        "register",
        "register_ddp",
    }
    assert dags[0].task_dict["register"].upstream_task_ids == {"evaluate", "train_xgboost"}
