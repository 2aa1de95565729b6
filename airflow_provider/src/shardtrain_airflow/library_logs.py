"""Ray's and MLflow's log lines in the task log at their own levels, not at error (Airflow's
supervisor logs a task's stderr at error): ``shardtrain.integrations.library_logs``."""

from shardtrain.integrations.library_logs import library_logs

__all__ = ["library_logs"]
