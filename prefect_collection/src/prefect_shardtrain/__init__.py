"""Prefect collection for shardtrain: tasks that train on Ray and return the model location.

The tasks and blocks land with the Prefect collection issue; this package is installable
already.
"""

__version__ = "0.1.0"
