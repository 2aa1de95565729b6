"""The integration layer: what every orchestrator (and a Ray Job) calls to train.

A ``TrainingSpec`` says what to run as plain JSON; ``run_training`` runs it and returns the
published ``ModelArtifact``. The wrappers keep only what is theirs (templating, connections,
request ids, links, logging) and build runs through here.
"""

from shardtrain.integrations.build import (
    build_distributor,
    build_estimator,
    failure_config,
    import_object,
    resolve_callable,
    resolve_module,
    scaling_config,
)
from shardtrain.integrations.data import connector_from_spec
from shardtrain.integrations.run import run_training
from shardtrain.integrations.sessions import (
    close_session,
    closing_session,
    connection_names,
    local_testing_session,
    session_from_configs,
    session_from_connection,
)
from shardtrain.integrations.spec import DataSpec, TrainingSpec, is_snowflake_stage
from shardtrain.model.artifact import request_id_from
from shardtrain.runtime.cluster import connect as connect_ray
from shardtrain.runtime.worker_group import shutdown_workers

__all__ = [
    "DataSpec",
    "TrainingSpec",
    "build_distributor",
    "build_estimator",
    "close_session",
    "closing_session",
    "connect_ray",
    "connection_names",
    "connector_from_spec",
    "failure_config",
    "import_object",
    "is_snowflake_stage",
    "local_testing_session",
    "request_id_from",
    "resolve_callable",
    "resolve_module",
    "run_training",
    "scaling_config",
    "session_from_configs",
    "session_from_connection",
    "shutdown_workers",
]
