"""Issue 15 leftover: after a restart from a checkpoint, the per-round numbers (the logged
``[round]`` lines, and the step each later checkpoint is saved under) go on from the
checkpoint instead of starting again at ``[1]``.

XGBoost counts ``epoch`` from 0 again when it continues a model; a rank that reported
``epoch + 1`` logged ``[1]`` after every restart, and saved its next checkpoint under a
relative step: a run killed again later resumed from that mislabelled checkpoint and ended
with more rounds than asked for.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from shardtrain.config import FailureConfig
from shardtrain.modeling.distributors.lightgbm import LightGBMEstimator, LightGBMScalingConfig
from shardtrain.modeling.distributors.xgboost import XGBEstimator, XGBScalingConfig
from shardtrain.runtime import worker_group
from tests.helpers import kill_rank_once_checkpointed

pytestmark = pytest.mark.ray  # real Ray workers, killed mid-run

FEATURES = [f"F{i}" for i in range(6)]
TWO = {"num_workers": 2, "num_cpu_per_worker": 1}
ROUND_LINE = re.compile(r"^\[(\d+)\]\t")
RESTART = re.compile(r"Restarting the worker group \(\d+/\d+\) from round (\d+)")


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_cluster):
    yield
    worker_group.shutdown_workers()  # free the CPUs the warm pool holds for later tests


def make_data(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, len(FEATURES))).astype(np.float32)
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["Y"] = 2 * x[:, 0] - x[:, 1] + np.sin(x[:, 2]) + rng.normal(0, 0.2, rows)
    return frame


class KillRankAtRound(xgb.callback.TrainingCallback):
    """SIGKILLs rank ``rank``'s worker once the model holds ``at_round`` rounds (counted on
    the model, so the same round of the run whatever the attempt), the first time only.

    Before dying it waits (up to ``WAIT_S``) until the run's checkpoint on the stage is at
    step ``saved_step`` or later, so where the run resumes does not depend on how fast the
    driver polled; a checkpoint saved under the wrong step never gets there.
    """

    WAIT_S = 20.0

    def __init__(self, marker: str, rank: int, at_round: int, state: str, saved_step: int):
        self.marker, self.rank, self.at_round = marker, rank, at_round
        self.state, self.saved_step = state, saved_step

    def _saved(self) -> int:
        try:
            with open(self.state) as handle:
                return int(json.load(handle)["step"])
        except (OSError, ValueError, KeyError):
            return 0

    def after_iteration(self, model, epoch, evals_log) -> bool:
        import xgboost.collective as collective

        if (
            model.num_boosted_rounds() == self.at_round
            and collective.get_rank() == self.rank
            and not os.path.exists(self.marker)
        ):
            deadline = time.monotonic() + self.WAIT_S
            while self._saved() < self.saved_step and time.monotonic() < deadline:
                time.sleep(0.05)
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return False


def logged_rounds(text: str) -> list[tuple[str, int]]:
    """The progress lines in order: ("round", n) for ``[n]\\t...``, ("restart", step)."""
    events = []
    for line in text.splitlines():
        if (match := RESTART.search(line)) is not None:
            events.append(("restart", int(match.group(1))))
        elif (match := ROUND_LINE.match(line)) is not None:
            events.append(("round", int(match.group(1))))
    return events


def assert_rounds_continue(events: list[tuple[str, int]], rounds: int, restarts: int) -> None:
    """Rounds go up by one, and after a restart from step s the next round logged is s + 1."""
    assert sum(kind == "restart" for kind, _ in events) == restarts, events
    previous = 0
    for kind, value in events:
        if kind == "restart":
            assert 0 < value <= previous, events  # resumes from a checkpoint already reached
            previous = value
            continue
        assert value == previous + 1, events
        previous = value
    assert previous == rounds, events


def progress_text(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "shardtrain")


def test_xgboost_round_numbers_continue_after_each_restart(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="shardtrain")
    state = str(tmp_path / "stage" / "checkpoints" / "xgb-rounds" / "state.json")
    est = XGBEstimator(
        n_estimators=30,
        params={"max_depth": 3},
        scaling_config=XGBScalingConfig(**TWO),
        callbacks=[
            KillRankAtRound(str(tmp_path / "first"), 1, at_round=12, state=state, saved_step=10),
            KillRankAtRound(str(tmp_path / "second"), 1, at_round=27, state=state, saved_step=25),
        ],
        failure_config=FailureConfig(max_failures=2, checkpoint_frequency=5),
    )
    booster = est.fit(
        make_data(4000, 0),
        FEATURES,
        "Y",
        verbose_eval=1,
        artifact_stage_location=str(tmp_path / "stage"),
        request_id="xgb-rounds",
    )
    assert (tmp_path / "first").exists() and (tmp_path / "second").exists()
    events = logged_rounds(progress_text(caplog))
    # Killed at 12 -> resumes from 10; killed at 27 -> resumes from 25 (its checkpoint is
    # saved under the model's own round count, not under the attempt's 15th round).
    assert [v for kind, v in events if kind == "restart"] == [10, 25], events
    assert_rounds_continue(events, rounds=30, restarts=2)
    assert booster.num_boosted_rounds() == 30
    assert len(est.get_eval_results()["train"]["rmse"]) == 30


def test_lightgbm_round_numbers_continue_after_a_restart(tmp_path, caplog):
    """LightGBM numbers a continued model's iterations from where it was; kept so."""
    caplog.set_level(logging.INFO, logger="shardtrain")
    stage = tmp_path / "stage"
    est = LightGBMEstimator(
        n_estimators=300,
        params={"num_leaves": 63, "learning_rate": 0.05},
        scaling_config=LightGBMScalingConfig(**TWO),
        failure_config=FailureConfig(max_failures=1, checkpoint_frequency=20),
    )
    thread, killed = kill_rank_once_checkpointed(stage)
    booster = est.fit(
        make_data(20_000, 1),
        FEATURES,
        "Y",
        verbose_eval=1,
        artifact_stage_location=str(stage),
        request_id="lgb-rounds",
    )
    thread.join()
    assert killed, "the worker was never killed"
    events = logged_rounds(progress_text(caplog))
    assert_rounds_continue(events, rounds=300, restarts=1)
    assert booster.current_iteration() == 300
