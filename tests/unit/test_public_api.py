"""The public API: every import path the docs show keeps importing, and paths that moved still
import, with a ``DeprecationWarning`` that names the new path (CHANGELOG.md, "Deprecation
policy").

``PUBLIC`` is the contract: removing or renaming one of its paths breaks users' code, so it
fails here first. Every import in a Python block of README.md and docs/*.md must be in it
(a path the docs show is public from then on), as must the vendor's paths of
../shared/seed-distributed-training.md with ``snowflake.ml`` replaced by ``shardtrain``.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OURS = ("shardtrain", "shardtrain_airflow", "prefect_shardtrain")

#: module -> the names it must export. An empty tuple: the module itself is imported.
PUBLIC: dict[str, tuple[str, ...]] = {
    "shardtrain": (
        "DataConnector",
        "LightGBMEstimator",
        "ModelArtifact",
        "ShardedDataConnector",
        "XGBEstimator",
        "XGBScalingConfig",
        "load_model",
        "open_stage",
        "publish_model",
    ),
    "shardtrain.config": ("FailureConfig",),
    "shardtrain.errors": ("ShardtrainError",),
    "shardtrain.data.data_connector": ("DataConnector",),
    "shardtrain.data.sharded_data_connector": ("ShardedDataConnector",),
    "shardtrain.integrations": ("TrainingSpec",),
    "shardtrain.jobs": ("JobTarget", "submit"),
    "shardtrain.model.registry": ("register_model",),
    "shardtrain.modeling": ("tune",),
    "shardtrain.modeling.distributors.xgboost": ("XGBEstimator", "XGBScalingConfig"),
    "shardtrain.modeling.distributors.lightgbm": ("LightGBMEstimator", "LightGBMScalingConfig"),
    "shardtrain.modeling.distributors.pytorch": (
        "ArtifactManager",
        "Context",
        "PyTorchDistributor",
        "PyTorchDistributorResult",
        "PyTorchScalingConfig",
        "WorkerResourceConfig",
        "get_context",
    ),
    "shardtrain.modeling.distributors.many_model": (
        "ManyModelInference",
        "ManyModelRun",
        "ManyModelTraining",
        "ModelSerde",
    ),
    "shardtrain.modeling.distributors.distributed_partition_function.entities": (
        "ExecutionOptions",
        "RunStatus",
    ),
    "shardtrain.modeling.tune": ("get_tuner_context",),
    "shardtrain.modeling.tune.search": ("RandomSearch",),
    "shardtrain.runtime_cluster": ("get_nodes", "scale_cluster"),
    "shardtrain.runtime_cluster.cluster_manager": ("get_nodes", "scale_cluster"),
    "shardtrain_airflow.operators": (
        "LightGBMTrainOperator",
        "ManyModelTrainOperator",
        "PyTorchTrainOperator",
        "RegisterModelOperator",
        "TuneOperator",
        "XGBoostTrainOperator",
    ),
    "prefect_shardtrain": (
        "ModelStage",
        "RayCluster",
        "register_many_models",
        "register_model",
        "train_many_models",
        "train_xgboost",
        "tune_hyperparameters",
    ),
}

#: Paths that moved: old module -> (the new path its warning names, {name: where it lives}).
DEPRECATED: dict[str, tuple[str, dict[str, str]]] = {
    "shardtrain.artifact": (
        "shardtrain.model.artifact",
        {"ModelArtifact": "shardtrain.model.artifact", "load_model": "shardtrain.model.load"},
    ),
    "shardtrain.registry": (
        "shardtrain.model.registry",
        {"register_model": "shardtrain.model.registry"},
    ),
}


def documented_imports(text: str) -> set[tuple[str, str]]:
    """(module, name) for each import of our packages in the text's Python blocks ("" as the
    name: ``import module``)."""
    found = set()
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(OURS):
                found |= {(node.module, alias.name) for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {(a.name, "") for a in node.names if a.name.startswith(OURS)}
    return found


def vendor_imports() -> set[tuple[str, str]]:
    seed = ROOT.parent / "shared" / "seed-distributed-training.md"
    if not seed.exists():  # a clone without the shared notes: the contract below still holds
        return set()
    text = seed.read_text().replace("snowflake.ml", "shardtrain")
    return documented_imports(text)


def _contract() -> set[tuple[str, str]]:
    return {(m, n) for m, names in PUBLIC.items() for n in names} | {(m, "") for m in PUBLIC}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_paths_import(module):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        imported = importlib.import_module(module)
    ours = [str(w.message) for w in caught if str(w.message).startswith(OURS)]
    assert not ours, f"a public path warns: {ours}"
    missing = [name for name in PUBLIC[module] if not hasattr(imported, name)]
    assert not missing, f"{module} no longer exports {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_documented_import_is_in_the_contract(doc):
    documented = documented_imports(doc.read_text())
    assert documented or doc.name != "README.md"
    extra = sorted(documented - _contract())
    assert not extra, f"{doc.name} shows imports the public API test does not hold: {extra}"


def test_the_vendor_paths_are_in_the_contract():
    extra = sorted(vendor_imports() - _contract())
    assert not extra, f"the vendor's paths (snowflake.ml -> shardtrain) missing: {extra}"


@pytest.mark.parametrize("old", sorted(DEPRECATED))
def test_moved_paths_import_with_a_warning_naming_the_new_path(old, monkeypatch):
    new, names = DEPRECATED[old]
    monkeypatch.delitem(sys.modules, old, raising=False)  # it warns on import: import it anew
    with pytest.warns(DeprecationWarning, match=re.escape(new)) as caught:
        module = importlib.import_module(old)
    assert f"{old} is deprecated" in str(caught[0].message)
    for name, home in names.items():  # the same objects, not copies
        assert getattr(module, name) is getattr(importlib.import_module(home), name)


def test_the_changelog_states_the_policy_and_the_deprecations():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## Deprecation policy" in changelog and "## [Unreleased]" in changelog
    for old in DEPRECATED:
        assert f"`{old}`" in changelog
