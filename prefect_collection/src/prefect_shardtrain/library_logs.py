"""Ray's and MLflow's log lines in the task run's log, at their own levels.

``shardtrain.integrations.library_logs`` lets the libraries' loggers propagate (Prefect's
console prints them once); the root handler added here sends their records to the run's log
(the API) in the run context of the thread that logged them (records from threads outside any
run stay on the console).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from prefect.context import get_run_context
from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler

from shardtrain.integrations import library_logs as _core

__all__ = ["ToRunLog", "library_logs"]


class ToRunLog(APILogHandler):
    """The root logger's records from one library, to the run's log (the API) when the
    emitting thread runs in a flow or task run."""

    def __init__(self, library: str) -> None:
        super().__init__()
        self.library = library

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] != self.library:
            return
        try:
            get_run_context()
        except MissingContextError:
            return  # a thread of the library's own, outside any run: the console has it
        super().emit(record)


@contextlib.contextmanager
def library_logs(*libraries: str) -> Iterator[None]:
    """Send the named libraries' logs (``"ray"``, ``"mlflow"``) to the run's log while the
    block runs."""
    with _core.library_logs(*libraries, root_handler=ToRunLog):
        yield
