"""What a client of a Ray job server needs to agree on with ``JobHandle``, in the standard
library only: job states, how a job's log is forwarded (whole lines, cleaned), where the
offset already forwarded is kept between processes, and how a stop shardtrain requested is
recorded (a marker job).

Airflow's ``RayJobTrigger`` talks to the job server's REST API from the triggerer's event
loop and loads this file by its path, without importing the ``shardtrain`` package (whose
``__init__`` imports pyarrow, whose C extension's init holds the GIL and stalls the loop):
keep it free of any import outside the standard library, and of relative imports.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
import time
from pathlib import Path

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

#: Where the offset of each job's log already forwarded is kept, under ``$SHARDTRAIN_HOME``:
#: one small JSON file per job (``<submission id>.json``).
LOG_OFFSETS_DIR = ("jobs", "log_offsets")
#: Offset files older than this are removed when a new one is written (their jobs are long
#: over: a job's forwarder rewrites its file at each poll that forwarded lines).
LOG_OFFSET_MAX_AGE_S = 7 * 24 * 3600

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


def log_offsets_dir(home: str | os.PathLike | None = None) -> Path:
    """The folder of the forwarded-log offsets: ``$SHARDTRAIN_HOME/jobs/log_offsets``
    (``~/.shardtrain`` without ``$SHARDTRAIN_HOME``, as ``shardtrain.home``)."""
    if home is None:
        home = os.environ.get("SHARDTRAIN_HOME", "").strip() or Path.home() / ".shardtrain"
    return Path(home).joinpath(*LOG_OFFSETS_DIR)


def _offset_file(submission_id: str, home: str | os.PathLike | None) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", submission_id)
    return log_offsets_dir(home) / f"{name}.json"


def read_log_offset(
    submission_id: str, started: int | None, *, home: str | os.PathLike | None = None
) -> int:
    """Characters of the job's log that a forwarder (a trigger, a task's wait) already
    forwarded, as it recorded them with ``write_log_offset``; 0 when nothing is recorded for
    this job. ``started`` is the job's ``start_time`` on its job server: a record of another
    job with the same submission id (a head started again, the request submitted again) is
    not this job's. Blocking file I/O: in an event loop, call it in a thread."""
    try:
        record = json.loads(_offset_file(submission_id, home).read_text())
    except (OSError, ValueError):
        return 0
    if (
        not isinstance(record, dict)
        or record.get("submission_id") != submission_id
        or record.get("started") != started
    ):
        return 0
    offset = record.get("offset")
    return offset if isinstance(offset, int) and offset > 0 else 0


def write_log_offset(
    submission_id: str,
    started: int | None,
    offset: int,
    *,
    home: str | os.PathLike | None = None,
) -> None:
    """Record that the job's log was forwarded up to ``offset`` (atomically: a reader sees
    the old record or the new one). The first record of a job removes records older than
    ``LOG_OFFSET_MAX_AGE_S``. Raises ``OSError`` when the folder cannot be written. Blocking
    file I/O: in an event loop, call it in a thread."""
    path = _offset_file(submission_id, home)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _remove_old_offsets(path.parent)
    record = {"submission_id": submission_id, "started": started, "offset": int(offset)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(record, out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def claim_log_offset(
    submission_id: str,
    started: int | None,
    start: int,
    end: int,
    *,
    home: str | os.PathLike | None = None,
) -> int:
    """Record, before forwarding them, that the caller forwards the job's log from ``start``
    to ``end``; where its forwarding starts: ``start``, or later when another forwarder of the
    job already recorded more (two triggers of one job run at once while triggerers hand it
    over), so no range is forwarded twice. Serialized by a lock file beside the record.
    Raises ``OSError`` when the folder cannot be written. Blocking file I/O: in an event loop,
    call it in a thread."""
    path = _offset_file(submission_id, home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = read_log_offset(submission_id, started, home=home)
        if end > saved:
            write_log_offset(submission_id, started, end, home=home)
        return max(start, saved)


def forget_log_offset(submission_id: str, *, home: str | os.PathLike | None = None) -> None:
    """Remove the job's record and its lock file (its forwarding is over and its offset kept
    elsewhere)."""
    path = _offset_file(submission_id, home)
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".lock").unlink(missing_ok=True)


def _remove_old_offsets(folder: Path) -> None:
    cutoff = time.time() - LOG_OFFSET_MAX_AGE_S
    for old in [*folder.glob("*.json"), *folder.glob("*.json.lock")]:
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:  # another process removed it meanwhile
            pass


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
