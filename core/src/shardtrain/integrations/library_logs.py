"""Ray's and MLflow's own log lines in the orchestrator's log, at their own levels.

Ray and MLflow log through handlers of their own that write to stderr (their loggers do not
propagate), and MLflow prints its registry events ("Registered model ...", "Created version
...") straight to stderr. A supervisor that logs a task's stderr at level error made every such
info line an error; one that reads only log records never saw them. Ray also drops its
handler when joined with ``configure_logging=False`` (the local head), so its info lines
vanished and its warnings reached stderr through Python's last-resort handler.

While a task runs, ``library_logs()`` lets those loggers propagate, without handlers of their
own (Ray's ``configure_logging=False`` clears the ``ray`` logger's handlers again, so a handler
of ours would not last), to the orchestrator's logging (the root logger) with their level and
logger name; strips the ANSI colour codes of Ray's dashboard line; and turns MLflow's printed
events into info records of the ``mlflow`` logger. A wrapper may add a root handler per library
(one that sends the records to its run's log). Everything comes back afterwards.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterator

#: The loggers each library configures with a stderr handler of its own.
LIBRARY_LOGGERS: dict[str, tuple[str, ...]] = {
    "ray": ("ray",),
    "mlflow": ("mlflow", "alembic"),
}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LOCK = threading.Lock()
_ACTIVE: dict[str, int] = {}  # library -> how many callers route it now
_SAVED: dict[str, list[tuple[logging.Logger, list[logging.Handler], bool]]] = {}
_ROOT_HANDLERS: dict[str, logging.Handler] = {}
#: Makes the root logger's extra handler for one library's records (None: none).
RootHandlerFactory = Callable[[str], logging.Handler]


class StripColour(logging.Filter):
    """Remove ANSI colour codes from a record's message (Ray colours its dashboard URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "\x1b[" in message:
            record.msg, record.args = _ANSI.sub("", message), None
        return True


class _LinesToLogger:
    """Write lines printed to MLflow's event stream as info records of ``logger``."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger, self.pending = logger, ""

    def __call__(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if line.strip():
                self.logger.info(_ANSI.sub("", line))
        return len(text)


#: Loggers that log coloured messages (``ray.init``'s "View the dashboard at ...").
COLOURED_LOGGERS = ("ray._private.worker",)
_STRIP_COLOUR = StripColour()


def _route(library: str, root_handler: RootHandlerFactory | None) -> None:
    saved = []
    for name in LIBRARY_LOGGERS[library]:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        logger.handlers, logger.propagate = [], True
    _SAVED[library] = saved
    if root_handler is not None:
        _ROOT_HANDLERS[library] = handler = root_handler(library)
        logging.getLogger().addHandler(handler)
    for name in COLOURED_LOGGERS:
        if name.split(".")[0] == library:
            logging.getLogger(name).addFilter(_STRIP_COLOUR)
    if library == "mlflow":
        stream = sys.modules["mlflow.utils.logging_utils"].MLFLOW_LOGGING_STREAM
        # eprint() and MLflow's handler write through this one object: its own ``write``
        # (an instance attribute) shadows the class's until restored.
        stream.write = _LinesToLogger(logging.getLogger("mlflow"))


def _restore(library: str) -> None:
    handler = _ROOT_HANDLERS.pop(library, None)
    if handler is not None:
        logging.getLogger().removeHandler(handler)
    for logger, handlers, propagate in _SAVED.pop(library):
        logger.handlers, logger.propagate = handlers, propagate
    for name in COLOURED_LOGGERS:
        if name.split(".")[0] == library:
            logging.getLogger(name).removeFilter(_STRIP_COLOUR)
    if library == "mlflow":
        stream = sys.modules["mlflow.utils.logging_utils"].MLFLOW_LOGGING_STREAM
        vars(stream).pop("write", None)


@contextlib.contextmanager
def library_logs(*libraries: str, root_handler: RootHandlerFactory | None = None) -> Iterator[None]:
    """Send the named libraries' logs (``"ray"``, ``"mlflow"``) to the orchestrator's log
    while the block runs (and, with ``root_handler``, to the handler it makes per library).
    A library that is installed is imported first: importing it installs its
    stderr handler, which must not happen inside the block. Nested and concurrent uses share
    one routing, undone by the last to leave."""
    routed = [lib for lib in libraries if importlib.util.find_spec(lib) is not None]
    for library in routed:
        importlib.import_module(library)
    with _LOCK:
        for library in routed:
            _ACTIVE[library] = _ACTIVE.get(library, 0) + 1
            if _ACTIVE[library] == 1:
                _route(library, root_handler)
    try:
        yield
    finally:
        with _LOCK:
            for library in routed:
                _ACTIVE[library] -= 1
                if not _ACTIVE[library]:
                    del _ACTIVE[library]
                    _restore(library)
