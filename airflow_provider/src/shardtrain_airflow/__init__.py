"""Airflow provider for shardtrain: operators that train on Ray and push the model location.

The operators themselves land with the Airflow provider issue; this package is installable
and registered with Airflow's provider manager already.
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
    }
