"""Airflow provider for shardtrain: operators that train on Ray and push the model location.

Each training operator returns ``ModelArtifact.to_dict()``: that return value is the XCom a
downstream task receives (the model's location, metrics, what it was trained on).
"""

__version__ = "0.1.0"


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
                "external-doc-url": "https://pypi.org/project/shardtrain/",
                "tags": ["software"],
            },
        ],
        "operators": [
            {
                "integration-name": "shardtrain",
                "python-modules": ["shardtrain_airflow.operators.train"],
            },
        ],
        "hooks": [
            {"integration-name": "shardtrain", "python-modules": ["shardtrain_airflow.hooks.ray"]},
        ],
        "connection-types": [
            {"hook-class-name": "shardtrain_airflow.hooks.ray.RayHook", "connection-type": "ray"},
        ],
        "extra-links": ["shardtrain_airflow.operators.train.ModelLocationLink"],
    }
