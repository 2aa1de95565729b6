"""The run engine (``runtime.run``) without Ray: ``Run.execute`` driven by fake attempts that
raise what a dying or failing worker group raises, ``CheckpointStore`` on a local stage, and
``RunPlan.publish`` writing a real folder. The same rules are exercised end to end, with
real workers killed, by tests/integration/core/test_gbdt.py and test_resume.py; here each
rule is checked on its own, in milliseconds."""

from __future__ import annotations

import json

import pytest

from shardtrain.config import FailureConfig
from shardtrain.errors import WorkerDiedError, WorkerError
from shardtrain.model.manifest import MANIFEST
from shardtrain.runtime.events import RoundMetrics
from shardtrain.runtime.progress import observe_progress
from shardtrain.runtime.run import CHECKPOINTS_DIR, Checkpoint, CheckpointStore, Run, RunPlan
from shardtrain.stage import open_stage

IDENTITY = {"params": {"max_depth": 3}, "rounds": 20, "columns": ["A", "B"]}


@pytest.fixture
def stage(tmp_path):
    return open_stage(str(tmp_path / "stage"))


def plan(stage, request_id="req-1", every=5, identity=IDENTITY) -> RunPlan:
    return RunPlan.open(
        stage.uri, request_id, checkpoint_every=every, checkpoint_name="model.ubj",
        identity=identity,
    )  # fmt: skip


@pytest.fixture
def said(caplog, capsys):
    """What the run told people: ``emit`` logs when logging is configured (pytest configures
    it), else prints."""
    caplog.set_level("INFO", logger="shardtrain")
    return lambda: caplog.text + capsys.readouterr().out


def died(rank=1, message="rank 1 died"):
    return WorkerDiedError(message, rank=rank)


# -- CheckpointStore ---------------------------------------------------------------------------


def test_a_new_store_has_no_checkpoint(stage):
    assert CheckpointStore(stage, "r", "m", IDENTITY).load() == Checkpoint()


def test_a_saved_checkpoint_loads_back_with_its_step_bytes_and_history(stage):
    store = CheckpointStore(stage, "r", "m", IDENTITY)
    store.save(Checkpoint(10, b"model-at-10", {"train": {"rmse": [0.5] * 10}}))
    loaded = CheckpointStore(stage, "r", "m", IDENTITY).load()
    assert loaded == Checkpoint(10, b"model-at-10", {"train": {"rmse": [0.5] * 10}})


def test_only_the_latest_checkpoint_is_kept(stage):
    store = CheckpointStore(stage, "r", "m", IDENTITY)
    for step in (5, 10, 15):
        store.save(Checkpoint(step, f"at-{step}".encode()))
    names = sorted(p.rsplit("/", 1)[-1] for p in stage.list(f"{CHECKPOINTS_DIR}/r"))
    assert names == ["00000015-m", "state.json"]
    assert store.load().data == b"at-15"


def test_state_names_the_model_file_and_the_identity(stage):
    CheckpointStore(stage, "r", "m", IDENTITY).save(Checkpoint(7, b"x"))
    state = json.loads(stage.read_bytes(f"{CHECKPOINTS_DIR}/r/state.json"))
    assert state["file"] == "00000007-m" and state["step"] == 7
    assert state["of"] == json.loads(json.dumps(IDENTITY))
    assert state["saved_at"] > 0


def test_an_identity_built_again_with_tuples_matches_the_recorded_one(stage):
    CheckpointStore(stage, "r", "m", {"columns": ("A", "B"), "n": 1}).save(Checkpoint(3, b"x"))
    assert CheckpointStore(stage, "r", "m", {"columns": ["A", "B"], "n": 1}).load().step == 3


def test_a_checkpoint_of_a_different_run_is_not_used_and_is_cleared(stage, said):
    CheckpointStore(stage, "r", "m", IDENTITY).save(Checkpoint(10, b"x"))
    changed = {**IDENTITY, "params": {"max_depth": 4}}
    assert CheckpointStore(stage, "r", "m", changed).load() == Checkpoint()
    out = said()
    assert "different run (changed: params)" in out and "starting fresh" in out
    assert not stage.exists(f"{CHECKPOINTS_DIR}/r/state.json")


def test_every_changed_field_is_named(stage, said):
    CheckpointStore(stage, "r", "m", IDENTITY).save(Checkpoint(10, b"x"))
    CheckpointStore(stage, "r", "m", {"rounds": 30, "columns": ["A"]}).load()
    assert "changed: columns, params, rounds" in said()


def test_a_checkpoint_whose_model_file_vanished_starts_fresh(stage, said):
    store = CheckpointStore(stage, "r", "m", IDENTITY)
    store.save(Checkpoint(10, b"x"))
    stage.delete(f"{CHECKPOINTS_DIR}/r/00000010-m")
    assert store.load() == Checkpoint()
    assert "is gone; starting fresh" in said()


def test_checkpoints_of_two_request_ids_do_not_mix(stage):
    CheckpointStore(stage, "a", "m", IDENTITY).save(Checkpoint(5, b"a"))
    CheckpointStore(stage, "b", "m", IDENTITY).save(Checkpoint(9, b"b"))
    assert CheckpointStore(stage, "a", "m", IDENTITY).load().data == b"a"
    assert CheckpointStore(stage, "b", "m", IDENTITY).load().data == b"b"


def test_clear_removes_the_run_s_checkpoints(stage):
    store = CheckpointStore(stage, "r", "m", IDENTITY)
    store.save(Checkpoint(5, b"a"))
    store.clear()
    assert store.load() == Checkpoint() and not stage.list(f"{CHECKPOINTS_DIR}/r")


# -- RunPlan -----------------------------------------------------------------------------------


def test_a_plan_without_checkpointing_has_no_store(stage):
    assert plan(stage, every=0).checkpoints is None


def test_a_plan_without_a_request_id_gets_a_new_one(stage):
    a, b = plan(stage, request_id=None), plan(stage, request_id=None)
    assert a.request_id and b.request_id and a.request_id != b.request_id


def test_a_request_id_that_is_no_folder_name_is_refused(stage):
    from shardtrain.errors import ShardtrainError

    with pytest.raises(ShardtrainError, match="request"):
        plan(stage, request_id="../escape")


def test_publish_writes_the_files_and_a_manifest_then_drops_the_checkpoints(stage):
    p = plan(stage)
    p.checkpoints.save(Checkpoint(5, b"ckpt"))
    artifact = p.publish(
        "xgboost", lambda folder: (folder / "model.ubj").write_bytes(b"model"), metrics={"a": 1}
    )
    assert artifact.request_id == "req-1" and artifact.framework == "xgboost"
    assert artifact.uri.endswith("model/req-1")
    model = [p for p in stage.list("model/req-1") if p.endswith("/model.ubj")]
    assert len(model) == 1 and stage.read_bytes(model[0]) == b"model"
    assert stage.exists(f"model/req-1/{MANIFEST}")
    assert not stage.exists(f"{CHECKPOINTS_DIR}/req-1/state.json")


def test_publish_of_nothing_returns_none_and_keeps_the_checkpoints(stage):
    p = plan(stage)
    p.checkpoints.save(Checkpoint(5, b"ckpt"))
    assert p.publish("xgboost", lambda folder: None) is None
    assert p.checkpoints.load().step == 5
    assert not stage.exists(f"model/req-1/{MANIFEST}")


def test_publish_draws_no_curves_without_per_round_metrics(stage):
    artifact = plan(stage, every=0).publish(
        "xgboost", lambda folder: (folder / "model.ubj").write_bytes(b"m")
    )
    assert not artifact.curves if hasattr(artifact, "curves") else True
    assert not any("curves" in p for p in stage.list("model/req-1"))


# -- Run.execute -------------------------------------------------------------------------------


def test_an_attempt_that_succeeds_runs_once_from_scratch(stage):
    seen = []
    run = Run(plan(stage), FailureConfig(max_failures=2), "round")
    assert run.execute(lambda ckpt: seen.append(ckpt) or "booster") == "booster"
    assert seen == [Checkpoint()]


def test_a_worker_death_restarts_from_the_latest_checkpoint(stage, said):
    run = Run(plan(stage), FailureConfig(max_failures=2), "round")
    starts = []

    def attempt(ckpt):
        starts.append(ckpt.step)
        if len(starts) == 1:
            run.save(Checkpoint(10, b"at-10"))
            raise died()
        return "done"

    assert run.execute(attempt) == "done"
    assert starts == [0, 10]
    assert "Restarting the worker group (1/2) from round 10." in said()


def test_the_restart_limit_is_max_failures(stage):
    run = Run(plan(stage), FailureConfig(max_failures=2), "round")
    calls = []

    def attempt(ckpt):
        calls.append(ckpt)
        raise died()

    with pytest.raises(WorkerDiedError, match="died more often than FailureConfig.max_failures"):
        run.execute(attempt)
    assert len(calls) == 3  # the first try and two restarts


def test_without_restarts_the_first_death_is_fatal_and_says_how_to_allow_them(stage):
    run = Run(plan(stage, every=0), FailureConfig(max_failures=0), "round")
    with pytest.raises(WorkerDiedError) as info:
        run.execute(lambda ckpt: (_ for _ in ()).throw(died(rank=3)))
    message = str(info.value)
    assert "[rank 3]" in message and "FailureConfig(max_failures=n" in message


def test_a_worker_error_is_never_retried_and_says_to_fix_the_cause(stage):
    run = Run(plan(stage), FailureConfig(max_failures=5), "round")
    calls = []

    def attempt(ckpt):
        calls.append(1)
        raise WorkerError("ValueError: bad label", rank=0)

    with pytest.raises(WorkerError, match="Fix the cause") as info:
        run.execute(attempt)
    assert len(calls) == 1 and not isinstance(info.value, WorkerDiedError)


def test_any_other_error_propagates_unchanged(stage):
    run = Run(plan(stage), FailureConfig(max_failures=5), "round")
    with pytest.raises(KeyError):
        run.execute(lambda ckpt: {}["missing"])


def test_the_error_names_the_round_reached_and_how_to_resume(stage):
    run = Run(plan(stage), FailureConfig(max_failures=0), "round")

    def attempt(ckpt):
        run.observe([RoundMetrics(r, {"train": {"rmse": 1.0 / r}}) for r in range(1, 8)], 20)
        run.save(Checkpoint(5, b"at-5"))
        raise died(rank=1)

    with pytest.raises(WorkerDiedError) as info:
        run.execute(attempt)
    message = str(info.value)
    assert "[rank 1, after round 7 of 20]" in message
    assert "resumes from its checkpoint at round 5" in message
    assert info.value.round == 7 and info.value.details["round"] == 7


def test_a_rerun_with_the_same_request_id_resumes_from_the_stored_checkpoint(stage, said):
    first = Run(plan(stage), FailureConfig(), "round")
    first.save(Checkpoint(15, b"at-15", {"train": {"rmse": [1.0] * 15}}))
    again = Run(plan(stage), FailureConfig(), "round")
    assert again.latest.step == 15 and again.latest.data == b"at-15"
    assert "resuming req-1 from its checkpoint at round 15" in said()


def test_a_rerun_that_changed_the_parameters_starts_fresh(stage):
    Run(plan(stage), FailureConfig(), "round").save(Checkpoint(15, b"at-15"))
    changed = Run(plan(stage, identity={**IDENTITY, "rounds": 40}), FailureConfig(), "round")
    assert changed.latest == Checkpoint()


def test_a_run_without_checkpointing_keeps_its_checkpoint_in_memory_only(stage):
    run = Run(plan(stage, every=0), FailureConfig(max_failures=1), "round")
    starts = []

    def attempt(ckpt):
        starts.append(ckpt.step)
        if len(starts) == 1:
            run.save(Checkpoint(4, b"in-memory"))
            raise died()
        return ckpt.data

    assert run.execute(attempt) == b"in-memory"
    assert starts == [0, 4] and not stage.list(CHECKPOINTS_DIR)


def test_the_history_restarts_from_the_checkpoint_s(stage):
    run = Run(plan(stage), FailureConfig(max_failures=1), "round")
    histories = []

    def attempt(ckpt):
        histories.append(dict(run.plan.history.metrics))
        if len(histories) == 1:
            run.observe([RoundMetrics(r, {"train": {"rmse": float(r)}}) for r in (1, 2, 3)], 10)
            run.save(Checkpoint(2, b"x", {"train": {"rmse": [1.0, 2.0]}}))
            raise died()
        return None

    run.execute(attempt)
    assert histories[0] == {}
    assert histories[1] == {"train": {"rmse": [1.0, 2.0]}}


def test_observers_of_the_caller_get_the_progress(stage):
    updates = []
    with observe_progress(updates.append):
        run = Run(plan(stage), FailureConfig(), "round")
    run.observe([RoundMetrics(r) for r in range(1, 11)], 10)
    run.execute(lambda ckpt: None)
    assert updates and updates[-1].step == 10 and updates[-1].total == 10


def test_the_unit_names_the_step_in_messages(stage, said):
    run = Run(plan(stage), FailureConfig(max_failures=1), "checkpoint")
    calls = []

    def attempt(ckpt):
        calls.append(1)
        if len(calls) == 1:
            run.save(Checkpoint(3, b"x"))
            raise died()

    run.execute(attempt)
    assert "from checkpoint 3." in said()
