"""Airflow provider for shardtrain: operators that train on Ray and push the model location.

Each training operator returns ``ModelArtifact.to_dict()``: that return value is the XCom a
downstream task receives (the model's location, metrics, what it was trained on).
"""

from importlib import metadata

try:  # one version source: the repository's VERSION file, through the installed metadata
    __version__ = metadata.version("airflow-provider-shardtrain")
except metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

DOCS_URL = "https://github.com/shardtrain/shardtrain/tree/main/airflow_provider#readme"


def get_provider_info() -> dict:
    """Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""
    return {
        "package-name": "airflow-provider-shardtrain",
        "name": "shardtrain",
        "description": "Train XGBoost, LightGBM and PyTorch models on Ray and pass the "
        "model location to downstream tasks.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "shardtrain",
                "external-doc-url": DOCS_URL,
                "tags": ["software"],
            },
        ],
        "operators": [
            {
                "integration-name": "shardtrain",
                "python-modules": [
                    "shardtrain_airflow.operators.train",
                    "shardtrain_airflow.operators.registry",
                    "shardtrain_airflow.operators.many_model",
                    "shardtrain_airflow.operators.tune",
                ],
            },
        ],
        "hooks": [
            {
                "integration-name": "shardtrain",
                "python-modules": [
                    "shardtrain_airflow.hooks.ray",
                    "shardtrain_airflow.hooks.snowpark",
                ],
            },
        ],
        # The connection form, declared (Airflow 3.2+ reads it without importing the hook).
        "connection-types": [
            {
                "hook-class-name": "shardtrain_airflow.hooks.ray.RayHook",
                "hook-name": "Ray",
                "connection-type": "ray",
                "conn-fields": {
                    "namespace": {
                        "label": "Namespace",
                        "schema": {"type": ["string", "null"]},
                        "description": "Ray namespace for the training actors.",
                    },
                    "runtime_env": {
                        "label": "Runtime environment (JSON)",
                        "schema": {"type": ["string", "null"]},
                        "description": 'Ray runtime_env as JSON, e.g. {"pip": ["xgboost"]}.',
                    },
                    "job_server": {
                        "label": "Job server",
                        "schema": {"type": ["string", "null"]},
                        "description": "The head's job server (dashboard) address, e.g. "
                        "http://ray-head:8265: training runs as a Ray Job there (reattach, "
                        "deferrable operators).",
                    },
                    "python": {
                        "label": "Python on the cluster",
                        "schema": {"type": ["string", "null"]},
                        "description": "Interpreter that runs the job (default: python).",
                    },
                    "snowflake_connection": {
                        "label": "Snowflake connection on the cluster",
                        "schema": {"type": ["string", "null"]},
                        "description": "Name of a connection in the cluster's "
                        "connections.toml; jobs read Snowflake data with it.",
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login"],
                    "relabeling": {
                        "host": "Address (ray://host:10001, host:6379 or auto)",
                        "password": "Job server token (if the cluster has token auth)",
                    },
                    "placeholders": {"host": "ray://ray-head:10001", "port": "10001"},
                },
            },
        ],
        "triggers": [
            {
                "integration-name": "shardtrain",
                "python-modules": ["shardtrain_airflow.triggers.ray_job"],
            },
        ],
        "extra-links": [
            "shardtrain_airflow.links.ModelLocationLink",
            "shardtrain_airflow.links.RayJobLink",
            "shardtrain_airflow.links.TrainingCurveLink",
            "shardtrain_airflow.links.RayDashboardLink",
        ],
    }
