"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/system/airflow_provider/test_airflow_services.py (test_ray_and_mlflow_info_lines_are_info_in_the_task_log, on the real scheduler of that module).]

Ray's and MLflow's info lines reach the Airflow task log at info, not at error.

Airflow's supervisor writes a task's stderr into its log at level error; Ray and MLflow write
their info lines to stderr through handlers of their own (MLflow prints its registry events).
Only a supervised task shows this, so the system half runs the DAG on a real scheduler: its
LocalExecutor runs each task in its own supervised process, which talks to a real execution
API server, and the test reads the task logs Airflow wrote (structlog JSON, one record a line).
"""

from __future__ import annotations

import logging

from shardtrain_airflow.library_logs import library_logs


def test_routing_survives_rays_own_reset_and_is_undone():
    """Records reach the root logger's handlers (the task log) at their level, also after
    ``ray.init(configure_logging=False)`` clears the ``ray`` logger's handlers; nested uses
    share one routing, and the libraries' own handlers come back at the end."""
    import mlflow  # noqa: F401  - installs MLflow's handlers, as an import in a task does
    import ray  # noqa: F401
    from mlflow.utils import logging_utils

    loggers = [logging.getLogger(name) for name in ("ray", "mlflow", "alembic")]
    before = [(list(logger.handlers), logger.propagate) for logger in loggers]
    records: list[logging.LogRecord] = []
    keep = logging.Handler()
    keep.emit = records.append
    logging.getLogger().addHandler(keep)
    try:
        with library_logs("ray", "mlflow"):
            with library_logs("ray"):
                pass
            logging.getLogger("ray").handlers.clear()  # what ray.init(configure_logging=False) does
            logging.getLogger("ray._private.worker").info(
                "dashboard at %s", "\x1b[1mhttp://h\x1b[22m"
            )
            logging_utils.eprint("Created version '1' of model 'm'.")
    finally:
        logging.getLogger().removeHandler(keep)
    assert [(r.name, r.levelno, r.getMessage()) for r in records] == [
        ("ray._private.worker", logging.INFO, "dashboard at http://h"),
        ("mlflow", logging.INFO, "Created version '1' of model 'm'."),
    ]
    assert [(list(logger.handlers), logger.propagate) for logger in loggers] == before
    assert "write" not in vars(logging_utils.MLFLOW_LOGGING_STREAM)
