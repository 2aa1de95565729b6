"""Progress of a long fit: round i of n, time elapsed and an estimate of the rest.

Computed on the driver from the per-round events it already polls from rank 0; nothing runs
on the workers. Two audiences, each at its own rate:

- people reading a task log get a line at most every ``LINE_EVERY_S`` seconds, or when
  another ``LINE_EVERY_FRACTION`` of the rounds is done (never two within ``LINE_MIN_GAP_S``),
  and a last line when the fit ends: a fit shorter than that prints only the last line;
- observers (an orchestrator's progress bar: see ``observe_progress``) get a ``Progress`` at
  most every ``OBSERVER_EVERY_S`` seconds, and the last one (``done``).

Both only ever move forward: rounds a restarted attempt runs again are not reported twice.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

logger = logging.getLogger("shardtrain")

#: Log lines: every 10 s, or every 10% of the rounds, but never two within 1 s.
LINE_EVERY_S = 10.0
LINE_EVERY_FRACTION = 0.10
LINE_MIN_GAP_S = 1.0
#: Observers: at most one update a second (each may be a call to an orchestrator's API).
OBSERVER_EVERY_S = 1.0


@dataclass(frozen=True)
class Progress:
    """Where a fit is: ``step`` of ``total`` (boosting rounds), seconds since it started and
    an estimate of the seconds left (None until a rate is known); ``done`` when it ended
    (early stopping ends a fit before ``total``)."""

    step: int
    total: int
    elapsed_s: float
    remaining_s: float | None
    unit: str = "round"
    done: bool = False

    @property
    def percent(self) -> float:
        """0 to 100; 100 once done."""
        if self.done or self.total <= 0:
            return 100.0
        return min(100.0, 100.0 * self.step / self.total)

    def format(self) -> str:
        """The log line, e.g. ``progress: round 40 of 100 (40%), 12.1 s elapsed, about
        18.2 s left``; ``Progress.parse`` reads it back (from a Ray job's log)."""
        head = f"progress: {self.unit} {self.step} of {self.total} ({self.percent:.0f}%)"
        if self.done:
            early = " (stopped before its last round)" if self.step < self.total else ""
            return f"{head}, done in {self.elapsed_s:.1f} s{early}"
        rest = "" if self.remaining_s is None else f", about {self.remaining_s:.1f} s left"
        return f"{head}, {self.elapsed_s:.1f} s elapsed{rest}"

    @classmethod
    def parse(cls, line: str) -> Progress | None:
        """The ``Progress`` a ``format`` line names (anywhere in ``line``), else None."""
        match = _LINE.search(line)
        if match is None:
            return None
        left = match["left"]
        return cls(
            step=int(match["step"]),
            total=int(match["total"]),
            elapsed_s=float(match["elapsed"] or match["took"]),
            remaining_s=float(left) if left else None,
            unit=match["unit"],
            done=match["took"] is not None,
        )


_LINE = re.compile(
    r"progress: (?P<unit>\w+) (?P<step>\d+) of (?P<total>\d+) \(\d+%\), "
    r"(?:done in (?P<took>[\d.]+) s|(?P<elapsed>[\d.]+) s elapsed"
    r"(?:, about (?P<left>[\d.]+) s left)?)"
)

#: What an observer receives.
ProgressObserver = Callable[[Progress], None]

_OBSERVERS: contextvars.ContextVar[tuple[ProgressObserver, ...]] = contextvars.ContextVar(
    "shardtrain_progress_observers", default=()
)


@contextlib.contextmanager
def observe_progress(observer: ProgressObserver) -> Iterator[None]:
    """Send the progress of every fit started in this context (this thread or task) to
    ``observer``; an orchestrator's wrapper draws its progress bar with it. An observer that
    raises is logged and dropped, never failing the fit."""
    token = _OBSERVERS.set((*_OBSERVERS.get(), observer))
    try:
        yield
    finally:
        _OBSERVERS.reset(token)


def current_observers() -> tuple[ProgressObserver, ...]:
    return _OBSERVERS.get()


class ProgressReporter:
    """Turns the rounds a fit reaches into rate-limited lines and observer updates.

    Args:
        total: the rounds planned.
        started: when the fit started (``clock()`` time): elapsed counts from it.
        line: where lines go (the run's ``emit``).
        observers: called with each update (default: those of ``observe_progress``).
        clock: seconds, monotonic (a test passes its own).
    """

    def __init__(
        self,
        total: int,
        *,
        started: float,
        line: Callable[[str], None],
        observers: tuple[ProgressObserver, ...] | None = None,
        unit: str = "round",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.unit, self.clock, self.line = total, unit, clock, line
        self.started = started
        self.observers = list(current_observers() if observers is None else observers)
        self.step = 0
        self._rate_from: tuple[int, float] | None = None  # (step, time) the estimate counts from
        self._line_at, self._line_step = started, 0
        self._observed_at: float | None = None
        self._finished = False

    def update(self, step: int) -> None:
        """The fit reached ``step``; reports it when it is time to."""
        now = self.clock()
        if self._rate_from is None:  # the estimate counts from the first round seen: not
            self._rate_from = (step, now)  # the data loading, nor a checkpoint's rounds
        if step <= self.step or self._finished:
            return
        self.step = step
        progress = self._progress(now)
        since = now - self._line_at
        fraction = (step - self._line_step) / self.total if self.total > 0 else 0.0
        if since >= LINE_EVERY_S or (fraction >= LINE_EVERY_FRACTION and since >= LINE_MIN_GAP_S):
            self._line_at, self._line_step = now, step
            self.line(progress.format())
        if self._observed_at is None or now - self._observed_at >= OBSERVER_EVERY_S:
            self._observed_at = now
            self._notify(progress)

    def finish(self) -> None:
        """The fit ended: the last line and update (once)."""
        if self._finished:
            return
        self._finished = True
        progress = Progress(
            self.step, self.total, self.clock() - self.started, 0.0, self.unit, done=True
        )
        self.line(progress.format())
        self._notify(progress)

    def _progress(self, now: float) -> Progress:
        remaining = None
        if self._rate_from is not None:
            from_step, from_time = self._rate_from
            if self.step > from_step and now > from_time:
                per_step = (now - from_time) / (self.step - from_step)
                remaining = max(0.0, (self.total - self.step) * per_step)
        return Progress(self.step, self.total, now - self.started, remaining, self.unit)

    def _notify(self, progress: Progress) -> None:
        for observer in list(self.observers):
            try:
                observer(progress)
            except Exception:  # an orchestrator's progress bar never fails the fit
                logger.warning("a progress observer failed; dropping it", exc_info=True)
                self.observers.remove(observer)
