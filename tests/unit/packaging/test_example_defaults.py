"""Example DAGs that start nothing heavy when unpaused (no schedule, small default data),
and docstrings that say how to point them at a real cluster; example flows that log through
Prefect's logger and persist their results."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[3] / "dags"
DAG_FILES = ["xgboost_training.py", "lightgbm_training.py", "pytorch_training.py"]
FLOW_FILES = ["xgboost_flow.py", "lightgbm_flow.py", "pytorch_flow.py"]


def _call_keywords(tree: ast.Module, name: str) -> dict[str, ast.expr]:
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    (call,) = [c for c in calls if isinstance(c.func, ast.Name) and c.func.id == name]
    return {k.arg: k.value for k in call.keywords}


@pytest.mark.parametrize("filename", DAG_FILES)
def test_example_dags_have_no_schedule_and_small_defaults(filename):
    source = (DAGS / filename).read_text()
    tree = ast.parse(source)
    keywords = _call_keywords(tree, "DAG")
    assert isinstance(keywords["schedule"], ast.Constant) and keywords["schedule"].value is None
    (param,) = [
        c
        for c in ast.walk(tree)
        if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "Param"
    ]
    assert param.args[0].value <= 20_000
    doc = ast.get_docstring(tree)
    for knob in ("SHARDTRAIN_RAY_CONN_ID", "SHARDTRAIN_STAGE", "SHARDTRAIN_REGISTRY"):
        assert knob in doc


@pytest.mark.parametrize("filename", FLOW_FILES)
def test_example_flows_log_through_prefect_and_persist_results(filename):
    source = (DAGS / filename).read_text()
    tree = ast.parse(source)
    assert "from __future__ import annotations" not in source  # breaks deployment runs
    assert not [
        c
        for c in ast.walk(tree)
        if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "print"
    ]
    assert "get_run_logger" in source
    keywords = _call_keywords(tree, "flow")
    assert keywords["persist_result"].value is True
    flow_fn = next(
        f
        for f in tree.body
        if isinstance(f, ast.FunctionDef)
        and any(getattr(getattr(d, "func", d), "id", "") == "flow" for d in f.decorator_list)
    )
    defaults = dict(zip([a.arg for a in flow_fn.args.args][-len(flow_fn.args.defaults) :],
                        flow_fn.args.defaults, strict=True))  # fmt: skip
    assert defaults["rows"].value <= 20_000
