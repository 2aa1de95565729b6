"""The boosting fit's log lines name what they count (issue 31): the memory-budget line and
the ``time per rank`` line both count a rank's training + eval rows, and say so."""

from __future__ import annotations

from shardtrain.modeling.distributors.boosting import BoostingRankResult, describe_rank_times
from shardtrain.runtime.memory import plan_memory


def test_time_per_rank_names_training_and_eval_rows():
    results = [
        BoostingRankResult(
            rows=800, best_iteration=None, eval_rows=200, data_seconds=0.5, training_seconds=1.25
        ),
        BoostingRankResult(rows=700, best_iteration=None, data_seconds=0.25, training_seconds=1.0),
    ]
    assert describe_rank_times(results) == (
        "time per rank: rank 0: 800 training + 200 eval rows, data 0.50 s, training 1.25 s, "
        "rank 1: 700 training + 0 eval rows, data 0.25 s, training 1.00 s"
    )


def test_the_memory_line_counts_the_same_rows_as_the_time_line():
    # rank 0: 800 training + 200 eval rows, as in the time line above
    plan = plan_memory(
        2**30, "test", [800 + 200, 700], 4, lambda rows, features, s: rows * 100, False, "x"
    )
    assert "rank 0, 1000 rows of training + eval data" in plan.describe()
