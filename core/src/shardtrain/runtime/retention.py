"""What runs that never succeeded leave on a stage, and removing it once it is old.

The retention rule (``shardtrain stage gc --older-than 7d``):

- a published model (a ``model/<request_id>/`` whose manifest names an attempt folder) is never
  removed, and neither is the attempt folder its manifest names;
- ``checkpoints/<request_id>/`` of a run is removed when its last checkpoint was saved longer
  ago than the age given (a run that publishes removes its own checkpoints; what is left belongs
  to runs that failed and were never retried, or whose retries gave up);
- an attempt folder no manifest names (a publish that died, or an attempt a newer publish
  replaced but could not delete) is removed when older than the age given.

A run still training saves checkpoints as it goes, so its folder stays young; pick an age well
above your longest run between two checkpoints.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from shardtrain.errors import ConfigError
from shardtrain.model.manifest import MANIFEST, named_attempt
from shardtrain.runtime.run import CHECKPOINTS_DIR
from shardtrain.stage.base import Stage, join

MODELS_DIR = "model"
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """Seconds in an age like ``7d``, ``12h``, ``30m``, ``90s`` or ``2w``."""
    match = _AGE.match(str(text))
    if not match:
        raise ConfigError(f"an age looks like 7d, 12h, 30m, 90s or 2w, got {text!r}.")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Leftover:
    """A folder on the stage that the retention rule removes."""

    path: str
    kind: str  # "checkpoint" or "attempt"
    age_s: float


def _attempt_time(name: str) -> float | None:
    """When an ``attempt-<UTC timestamp>-<random>`` folder was started."""
    try:
        stamp = name.split("-", 2)[1]
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC).timestamp()
    except (IndexError, ValueError):
        return None


def _children(stage: Stage, prefix: str) -> set[str]:
    return {p[len(prefix) + 1 :].split("/", 1)[0] for p in stage.list(prefix)}


def find_leftovers(
    stage: Stage, older_than_s: float, *, now: float | None = None
) -> list[Leftover]:
    """Everything the retention rule removes from ``stage`` at ``now``."""
    now = time.time() if now is None else now
    found = []
    for request_id in sorted(_children(stage, CHECKPOINTS_DIR)):
        base = join(CHECKPOINTS_DIR, request_id)
        state_path = join(base, "state.json")
        try:
            saved_at = float(json.loads(stage.read_bytes(state_path))["saved_at"])
        except (KeyError, TypeError, ValueError, OSError, FileNotFoundError):
            continue  # no readable time (a checkpoint being written, an old format): keep it
        if now - saved_at > older_than_s:
            found.append(Leftover(base, "checkpoint", now - saved_at))
    for request_id in sorted(_children(stage, MODELS_DIR)):
        base = join(MODELS_DIR, request_id)
        named = named_attempt(stage, base)
        if named is None and stage.exists(join(base, MANIFEST)):
            continue  # a manifest gc cannot read: leave that model alone
        for attempt in sorted(_children(stage, base)):
            started = _attempt_time(attempt) if attempt.startswith("attempt-") else None
            if attempt == named or started is None:
                continue
            if now - started > older_than_s:
                found.append(Leftover(join(base, attempt), "attempt", now - started))
    return found


def collect_garbage(
    stage: Stage, older_than_s: float, *, dry_run: bool = False, now: float | None = None
) -> list[Leftover]:
    """Remove what ``find_leftovers`` finds (nothing when ``dry_run``); returns it."""
    leftovers = find_leftovers(stage, older_than_s, now=now)
    if not dry_run:
        for leftover in leftovers:
            stage.delete(leftover.path)
    return leftovers
