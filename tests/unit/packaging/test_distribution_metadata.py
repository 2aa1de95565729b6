"""Packaging metadata as Airflow providers and Prefect collections have it: one version
source, a LICENSE and a README (the long description) per distribution, classifiers, URLs,
``py.typed``, and the same extras on all three distributions."""

from __future__ import annotations

import importlib
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DISTRIBUTIONS = {  # folder -> (distribution, import name)
    "core": ("shardtrain", "shardtrain"),
    "airflow_provider": ("airflow-provider-shardtrain", "shardtrain_airflow"),
    "prefect_collection": ("prefect-shardtrain", "prefect_shardtrain"),
}
EXTRAS = {"xgboost", "xgboost-cpu", "lightgbm", "torch", "snowflake", "mlflow", "tune", "all"}
#: Extras only one wrapper has (its orchestrator's own integrations).
WRAPPER_EXTRAS = {"airflow_provider": {"openlineage"}}
VERSION = (REPO / "VERSION").read_text().strip()


def pyproject(folder: str) -> dict:
    return tomllib.loads((REPO / folder / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize("folder", DISTRIBUTIONS)
def test_one_version_source(folder):
    project = pyproject(folder)
    assert "version" not in project and "version" in project["dynamic"]
    link = REPO / folder / "VERSION"
    assert link.is_symlink() and link.resolve() == (REPO / "VERSION").resolve()
    distribution, module = DISTRIBUTIONS[folder]
    assert metadata.version(distribution) == VERSION
    assert importlib.import_module(module).__version__ == VERSION


def test_no_version_is_written_in_the_sources():
    sources = [p for f in DISTRIBUTIONS for p in (REPO / f / "src").rglob("*.py")]
    written = [
        p for p in sources if re.search(r"""__version__\s*=\s*["']\d+\.\d+""", p.read_text())
    ]
    assert not written


@pytest.mark.parametrize("folder", DISTRIBUTIONS)
def test_license_readme_classifiers_urls_and_py_typed(folder):
    project = pyproject(folder)
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert (REPO / folder / "LICENSE").read_text().startswith(" " * 30 + "Apache License")
    readme = (REPO / folder / project["readme"]).read_text()
    assert len(readme.splitlines()) > 20 and "pip install" in readme
    assert "Typing :: Typed" in project["classifiers"]
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(project["urls"])
    _, module = DISTRIBUTIONS[folder]
    assert (REPO / folder / "src" / module / "py.typed").exists()
    assert metadata.metadata(DISTRIBUTIONS[folder][0])["License-Expression"] == "Apache-2.0"


def test_the_provider_is_classified_as_an_airflow_provider():
    classifiers = pyproject("airflow_provider")["classifiers"]
    assert "Framework :: Apache Airflow :: Provider" in classifiers


@pytest.mark.parametrize("folder", DISTRIBUTIONS)
def test_every_distribution_offers_the_same_extras(folder):
    extras = pyproject(folder)["optional-dependencies"]
    assert set(extras) == EXTRAS | WRAPPER_EXTRAS.get(folder, set())
    if folder != "core":  # passed through to shardtrain's extra of the same name
        for name in EXTRAS:
            assert f"shardtrain[{name}]" in extras[name]


def test_the_cpu_only_xgboost_choice_and_all():
    extras = pyproject("core")["optional-dependencies"]
    assert extras["xgboost-cpu"] == ["xgboost-cpu>=2.1"]
    assert extras["xgboost"] == ["xgboost>=2.1"]
    names = {re.split(r"[<>=\[]", r)[0] for r in extras["all"]}
    assert "xgboost-cpu" in names and "xgboost" not in names  # never both wheels


def test_the_wrappers_force_neither_snowflake_nor_mlflow():
    for folder in ("airflow_provider", "prefect_collection"):
        dependencies = " ".join(pyproject(folder)["dependencies"])
        assert "snowflake" not in dependencies and "mlflow" not in dependencies
        assert "[" not in dependencies  # no extra of shardtrain forced either
    assert (
        "prefect-snowflake>=0.28"
        in pyproject("prefect_collection")["optional-dependencies"]["snowflake"]
    )
    assert any(
        r.startswith("apache-airflow-providers-snowflake")
        for r in pyproject("airflow_provider")["optional-dependencies"]["snowflake"]
    )


def test_the_airflow_floor_is_the_verified_one():
    """The lowest Airflow installed and run end to end (check_fresh_installs.sh): 3.0 lacks
    ``airflow.sdk.BaseHook``; on 3.1.0 the example DAG did not run with the dev pins."""
    assert "apache-airflow>=3.3.2" in pyproject("airflow_provider")["dependencies"]
    assert "prefect>=3.7.7" in pyproject("prefect_collection")["dependencies"]


def test_core_installs_the_ray_its_local_head_needs():
    """A fresh `pip install shardtrain` failed to start the local head: `ray` alone lacks the
    client server and dashboard (found by check_fresh_installs.sh)."""
    assert any(r.startswith("ray[default]") for r in pyproject("core")["dependencies"])
