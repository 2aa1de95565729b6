"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/core/test_progress.py.]

Progress of a fit: round i of n, elapsed and remaining, at a readable rate in the log and
to observers (an orchestrator's progress bar), always moving forward, ending at n of n."""

from __future__ import annotations

import pytest

from shardtrain.runtime import progress as progress_module
from shardtrain.runtime.progress import (
    LINE_EVERY_FRACTION,
    LINE_EVERY_S,
    OBSERVER_EVERY_S,
    Progress,
    ProgressReporter,
    observe_progress,
)


class Clock:
    """Seconds that move only when the test says (the reporter reads time through it)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reporter(total: int, clock: Clock, observers=()) -> tuple[ProgressReporter, list[str]]:
    lines: list[str] = []
    return (
        ProgressReporter(
            total, started=clock(), line=lines.append, observers=tuple(observers), clock=clock
        ),
        lines,
    )


def test_a_slow_fit_gets_a_line_every_10_seconds_with_an_estimate():
    clock = Clock()
    seen: list[Progress] = []
    report, lines = reporter(1000, clock, [seen.append])
    for step in range(1, 41):  # 2 s per round: a line each 10 s (5 rounds), far below 10%
        clock.now += 2.0
        report.update(step)
    assert len(lines) == 40 * 2.0 / LINE_EVERY_S
    parsed = [Progress.parse(line) for line in lines]
    assert [p.step for p in parsed] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert parsed[-1].elapsed_s == pytest.approx(80.0)
    assert parsed[-1].remaining_s == pytest.approx((1000 - 40) * 2.0)
    assert lines[-1] == "progress: round 40 of 1000 (4%), 80.0 s elapsed, about 1920.0 s left"
    # observers: at most one update a second, here one per round
    assert [p.step for p in seen] == list(range(1, 41))


def test_a_fast_fit_gets_a_line_per_10_percent_and_none_within_a_second():
    clock = Clock()
    report, lines = reporter(100, clock)
    for step in range(1, 101):
        clock.now += 0.5
        report.update(step)
    steps = [Progress.parse(line).step for line in lines]
    assert steps == list(range(10, 101, 10))
    assert all(b - a >= LINE_EVERY_FRACTION * 100 for a, b in zip(steps, steps[1:], strict=False))

    clock = Clock()
    report, lines = reporter(100, clock)
    for step in range(1, 101):  # 100 rounds in 0.1 s: nothing until the last line
        clock.now += 0.001
        report.update(step)
    assert lines == []
    report.finish()
    assert lines == ["progress: round 100 of 100 (100%), done in 0.1 s"]


def test_progress_only_moves_forward_and_ends_once_at_n_of_n():
    clock = Clock()
    seen: list[Progress] = []
    report, lines = reporter(30, clock, [seen.append])
    for step in [*range(1, 21), *range(11, 31)]:  # a restart from a checkpoint at round 10
        clock.now += OBSERVER_EVERY_S
        report.update(step)
    report.finish()
    report.finish()
    steps = [p.step for p in seen]
    assert steps[:-1] == list(range(1, 31)) and steps[-1] == 30  # never back, each once
    percents = [p.percent for p in seen]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert [p.done for p in seen].count(True) == 1 and seen[-1].done
    assert (seen[-1].step, seen[-1].total) == (30, 30)
    assert Progress.parse(lines[-1]) == Progress(30, 30, seen[-1].elapsed_s, None, done=True)


def test_a_failing_observer_is_dropped_without_failing_the_fit(caplog):
    clock = Clock()
    seen: list[int] = []

    def broken(progress: Progress) -> None:
        raise RuntimeError("API down")

    report, _ = reporter(10, clock, [broken, lambda p: seen.append(p.step)])
    for step in (1, 2, 3):
        clock.now += 1.0
        report.update(step)
    assert seen == [1, 2, 3] and report.observers == [report.observers[0]]
    assert caplog.text.count("a progress observer failed") == 1


def test_a_line_reads_back_from_a_job_log():
    line = Progress(40, 100, 12.5, 18.5).format()
    assert Progress.parse(f"[ray job] INFO shardtrain: {line}") == Progress(40, 100, 12.5, 18.5)
    assert Progress.parse(Progress(3, 9, 1.0, None).format()) == Progress(3, 9, 1.0, None)
    early = Progress(37, 100, 5.0, 0.0, done=True)  # early stopping ended it at 37
    assert early.format() == (
        "progress: round 37 of 100 (100%), done in 5.0 s (stopped before its last round)"
    )
    assert Progress.parse(early.format()) == Progress(37, 100, 5.0, None, done=True)
    assert Progress.parse("[10]\ttrain-rmse:0.5") is None


def test_observers_belong_to_the_context_that_set_them():
    got: list[str] = []
    with observe_progress(lambda p: got.append("outer")):
        with observe_progress(lambda p: got.append("inner")):
            assert len(progress_module.current_observers()) == 2
        assert len(progress_module.current_observers()) == 1
    assert progress_module.current_observers() == ()
