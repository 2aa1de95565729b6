"""What a client of a Ray job server needs to agree on with ``JobHandle``, in the standard
library only: job states, how a job's log is forwarded (whole lines, cleaned) and how a stop
shardtrain requested is recorded (a marker job).

Airflow's ``RayJobTrigger`` talks to the job server's REST API from the triggerer's event
loop and loads this file by its path, without importing the ``shardtrain`` package (whose
``__init__`` imports pyarrow, whose C extension's init holds the GIL and stalls the loop):
keep it free of any import outside the standard library, and of relative imports.
"""

from __future__ import annotations

import re

#: Job states as Ray's job server names them.
PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED = (
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "STOPPED",
)
TERMINAL = frozenset({SUCCEEDED, FAILED, STOPPED})
#: A forwarded log line longer than this is cut (with a marker saying how much was cut).
MAX_LOG_LINE_CHARS = 2000
#: A stop that shardtrain requested is recorded as a marker job named after the stopped job
#: (``<submission id>-stop``, a no-op): ``submit`` never reattaches to a job that has one, and
#: a try that finds its job STOPPED by an earlier try's kill starts the next attempt.
STOP_MARKER_SUFFIX = "-stop"
#: The marker job's entrypoint (a no-op) and the metadata key naming the stopped job.
STOP_MARKER_ENTRYPOINT = "true"
STOP_MARKER_METADATA_KEY = "shardtrain_stop_of"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
#: Ray's first line of a job's log names the whole entrypoint, the spec's JSON included.
_SPEC_ARG = re.compile(r"""--spec\s+('(?:[^']|'"'"')*'|\S+)""")
_REQUEST = re.compile(r'"request_id":\s*"([^"]*)"')


def clean_log_line(line: str, *, max_chars: int = MAX_LOG_LINE_CHARS) -> str:
    """A job log line as shardtrain forwards it: ANSI colour codes stripped, an entrypoint's
    ``--spec '<JSON>'`` shortened to the request id, and at most ``max_chars`` characters."""
    line = _ANSI.sub("", line)
    if "--spec" in line:

        def short(match: re.Match) -> str:
            request = _REQUEST.search(match.group(1))
            return f"--spec <TrainingSpec of request {request.group(1) if request else '?'}>"

        line = _SPEC_ARG.sub(short, line)
    if len(line) > max_chars:
        line = f"{line[:max_chars]}... [{len(line) - max_chars} more characters cut]"
    return line


def new_log_lines(text: str, offset: int, *, final: bool = False) -> tuple[list[str], int]:
    """The complete lines of a job's whole log ``text`` past ``offset``, cleaned
    (``clean_log_line``), and the offset past them; a line still being written waits for its
    newline unless ``final`` (the job has ended)."""
    new = text[offset:]
    if not final:
        new = new[: new.rfind("\n") + 1]
    return [clean_log_line(line) for line in new.splitlines()], offset + len(new)


def stop_marker_id(submission_id: str) -> str:
    """The submission id of the marker that records a stop shardtrain requested."""
    return f"{submission_id}{STOP_MARKER_SUFFIX}"


def stop_marker_request(submission_id: str) -> dict:
    """The job server's submit request (``POST /api/jobs/``) of the stop marker of
    ``submission_id``: a no-op entrypoint that reserves no CPU."""
    return {
        "entrypoint": STOP_MARKER_ENTRYPOINT,
        "submission_id": stop_marker_id(submission_id),
        "metadata": {STOP_MARKER_METADATA_KEY: submission_id},
        "entrypoint_num_cpus": 0,
    }
