"""Issue 27's Airflow boundary, as logic with in-process fakes (no Ray, no Airflow services):

- connecting to Ray keeps the process's SIGTERM/SIGINT handlers (Airflow's calls on_kill);
- the extra links read a missing XCom without the supervisor's "XCom not found" ERROR;
- a job's log is forwarded once: from an offset, whole lines only, cleaned (ANSI codes, the
  entrypoint's spec, long lines) in messages too;
- a stop shardtrain asked for is recorded, waited for (bounded), and never reattached to;
- the trigger module imports nothing heavy (the triggerer imports it in its event loop), its
  event names the job and request, not the spec, and it resumes from the offset it is given.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import shlex
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from shardtrain.integrations import TrainingSpec
from shardtrain.jobs import JobHandle, JobStoppedError, JobTarget, submit
from shardtrain.jobs import handle as handle_module

TARGET = JobTarget(address="http://head:8265")


def _spec(request_id: str = "dag__run__train") -> TrainingSpec:
    return TrainingSpec(
        framework="xgboost",
        request_id=request_id,
        artifact_stage_location="/tmp/stage",
        train_data={"path": "/data/train.parquet"},
        input_cols=["A", "B"],
        label_col="Y",
        n_estimators=10,
    )


class FakeJobClient:
    """Ray's JobSubmissionClient as the handle and submit use it."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.stopping_polls = 2  # status polls a stopped job stays RUNNING
        self.status_calls = 0

    def add(self, sid, status="RUNNING", log=""):
        self.jobs[sid] = {"status": status, "log": log, "stop_at": None}

    def list_jobs(self):
        return [SimpleNamespace(submission_id=s, status=j["status"]) for s, j in self.jobs.items()]

    def submit_job(self, *, entrypoint, submission_id, **kwargs):
        if submission_id in self.jobs:
            raise RuntimeError(f"Job with submission_id {submission_id} already exists.")
        self.add(submission_id, "SUCCEEDED" if entrypoint == "true" else "RUNNING")
        self.jobs[submission_id]["entrypoint"] = entrypoint
        return submission_id

    def get_job_status(self, sid):
        self.status_calls += 1
        job = self.jobs[sid]
        if job["stop_at"] is not None and self.status_calls >= job["stop_at"]:
            job["status"] = "STOPPED"
        return job["status"]

    def get_job_logs(self, sid):
        return self.jobs[sid]["log"]

    def stop_job(self, sid):
        job = self.jobs[sid]
        if job["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return False
        job["stop_at"] = self.status_calls + self.stopping_polls
        return True


# -- 2: signal handlers ----------------------------------------------------------------------


def test_connecting_to_ray_keeps_the_processes_sigterm_and_sigint_handlers(monkeypatch):
    from shardtrain_airflow.hooks import ray as ray_hook

    def fake_ray_init(**settings):  # what ray.init does to the handlers of its process
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def airflow_on_term(signum, frame):  # the task runner's: it calls on_kill
        raise AssertionError("not sent")

    monkeypatch.setattr(ray_hook, "connect_ray", fake_ray_init)
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, airflow_on_term)
    try:
        ray_hook.RayHook().connect()
        assert signal.getsignal(signal.SIGTERM) is airflow_on_term
        assert signal.getsignal(signal.SIGINT) is saved[1]
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])


# -- 4: links and missing XComs --------------------------------------------------------------


class FakeSupervisorComms:
    """The task's channel to its supervisor, answering as the real one does: a missing XCom
    read comes back as None after the supervisor logged "XCom not found" at ERROR."""

    def __init__(self, xcoms: dict[str, object]) -> None:
        self.xcoms = xcoms
        self.sent: list[object] = []

    def send(self, msg):
        from airflow.sdk.execution_time.comms import XComCountResponse, XComResult

        self.sent.append(msg)
        if msg.type == "GetXComCount":
            return XComCountResponse(len=int(msg.key in self.xcoms))
        if msg.type == "GetXCom":
            if msg.key not in self.xcoms:
                logging.getLogger("airflow.sdk.api.client").error(
                    "XCom not found key=%s task_id=%s", msg.key, msg.task_id
                )
                return XComResult(key=msg.key, value=None)
            return XComResult(key=msg.key, value=self.xcoms[msg.key])
        raise AssertionError(f"unexpected message {msg!r}")


@pytest.mark.parametrize(
    "xcoms",
    [
        {},  # deferred or failed before anything was recorded
        {"ray_job": {"submission_id": "j", "dashboard_url": "http://h/#/jobs/j"}},  # job mode
        {"ray_dashboard": "http://h:8265"},  # in process
    ],
    ids=["none", "job", "in-process"],
)
def test_links_of_missing_xcoms_are_empty_and_log_nothing(monkeypatch, caplog, xcoms):
    from airflow.sdk.execution_time import task_runner

    from shardtrain_airflow.links import (
        ModelLocationLink,
        RayDashboardLink,
        RayJobLink,
        TrainingCurveLink,
    )

    comms = FakeSupervisorComms(xcoms)
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    key = SimpleNamespace(dag_id="d", run_id="r", task_id="train", map_index=-1, try_number=1)
    caplog.set_level(logging.DEBUG)
    links = {
        type(link).__name__: link.get_link(None, ti_key=key)
        for link in (ModelLocationLink(), RayJobLink(), TrainingCurveLink(), RayDashboardLink())
    }
    assert links["ModelLocationLink"] == links["TrainingCurveLink"] == ""
    assert links["RayJobLink"] == (xcoms.get("ray_job") or {}).get("dashboard_url", "")
    expected_dashboard = xcoms.get("ray_dashboard") or (xcoms.get("ray_job") or {}).get(
        "dashboard_url", ""
    )
    assert links["RayDashboardLink"] == expected_dashboard
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]
    assert not [m for m in comms.sent if m.type == "GetXCom" and m.key not in xcoms]


# -- 6 and 10: the job's log, forwarded once and cleaned -------------------------------------


def test_log_lines_are_cleaned_capped_and_name_the_request_not_the_spec():
    from shardtrain.jobs.handle import MAX_LOG_LINE_CHARS, clean_log_line

    spec = _spec()
    entry = f"{sys.executable} -m shardtrain.jobs run --spec {shlex.quote(spec.to_json())}"
    line = clean_log_line(f"Running entrypoint for job shardtrain-x-1: {entry}")
    assert line.endswith(f"--spec <TrainingSpec of request {spec.request_id}>")
    assert "input_cols" not in line
    assert (
        clean_log_line("\x1b[32m[10]\x1b[0m train-rmse:\x1b[1m0.5\x1b[0m") == "[10] train-rmse:0.5"
    )
    long = clean_log_line("y" * 5000)
    assert long.startswith("y" * MAX_LOG_LINE_CHARS) and long.endswith("3000 more characters cut]")
    assert len(long) < MAX_LOG_LINE_CHARS + 50


def test_the_log_is_forwarded_once_from_the_offset_whole_lines_only():
    client = FakeJobClient()
    client.add("job-1", log="line 1\nline 2\nline 3 still being wri")
    handle = JobHandle("job-1", _spec(), TARGET, _client=client)
    assert handle.new_log_lines() == ["line 1", "line 2"]
    client.jobs["job-1"]["log"] += "tten\n\x1b[31mline 4\x1b[0m\n"
    assert handle.new_log_lines() == ["line 3 still being written", "line 4"]
    offset = handle.log_offset

    # A later try (or a trigger) given the offset forwards only what came since.
    client.jobs["job-1"]["log"] += "line 5\nlast, no newline"
    client.jobs["job-1"]["status"] = "SUCCEEDED"
    again = JobHandle("job-1", _spec(), TARGET, log_offset=offset, _client=client)
    forwarded, offsets = [], []
    assert again.wait(poll_s=0, on_log=forwarded.append, on_offset=offsets.append) == "SUCCEEDED"
    assert forwarded == ["line 5", "last, no newline"]
    assert offsets == [len(client.jobs["job-1"]["log"])]


def test_a_stopped_jobs_error_names_job_and_request_not_the_spec():
    spec = _spec()
    client = FakeJobClient()
    entry = f"python -m shardtrain.jobs run --spec {shlex.quote(spec.to_json())}"
    client.add("job-1", "STOPPED", log=f"Running entrypoint for job job-1: {entry}\n[5] rmse\n")
    handle = JobHandle("job-1", spec, TARGET, _client=client)
    with pytest.raises(JobStoppedError) as err:
        handle.raise_for_status()
    text = str(err.value)
    assert "job-1" in text and spec.request_id in text
    assert "input_cols" not in text and "/data/train.parquet" not in text


# -- 3: a stop is complete before on_kill returns; never reattach to a stopping job ----------


def test_stop_waits_until_the_job_has_ended_and_records_the_stop():
    client = FakeJobClient()
    client.add("shardtrain-r-1")
    handle = JobHandle("shardtrain-r-1", _spec("r"), TARGET, _client=client)
    assert not handle.stop_requested()
    assert handle.stop(wait_s=5, poll_s=0) == "STOPPED"
    assert handle.stop_requested()
    assert "shardtrain-r-1-stop" in client.jobs  # the marker: a no-op job


def test_stop_logs_when_its_bound_expires(caplog):
    client = FakeJobClient()
    client.stopping_polls = 10**9  # never ends
    client.add("shardtrain-r-1")
    handle = JobHandle("shardtrain-r-1", _spec("r"), TARGET, _client=client)
    caplog.set_level(logging.WARNING, logger="shardtrain.jobs")
    started = time.monotonic()
    assert handle.stop(wait_s=0.2, poll_s=0.05) == "RUNNING"
    assert time.monotonic() - started < 2
    assert "still RUNNING" in caplog.text and "shardtrain-r-1" in caplog.text


def test_submit_never_reattaches_to_a_job_whose_stop_was_requested(monkeypatch):
    client = FakeJobClient()
    monkeypatch.setattr(JobTarget, "client", lambda self: client)
    spec = _spec("r")
    first = submit(spec, TARGET)
    assert first.submission_id == "shardtrain-r-1" and not first.reattached
    assert submit(spec, TARGET).submission_id == "shardtrain-r-1"  # a restart reattaches

    first.cancel()  # a killed try: the job is still RUNNING for a few polls
    assert client.jobs["shardtrain-r-1"]["status"] == "RUNNING"
    second = submit(spec, TARGET)
    assert second.submission_id == "shardtrain-r-2" and not second.reattached
    assert not second.stop_requested()


def test_a_try_that_finds_its_job_stopped_by_an_earlier_kill_starts_the_next_attempt(
    monkeypatch,
):
    """A cleared try that reattached before the earlier try's stop landed: its wait sees
    STOPPED with shardtrain's marker and starts the next job, instead of failing."""
    from shardtrain_airflow.operators import XGBoostTrainOperator
    from shardtrain_airflow.operators import train as train_module

    client = FakeJobClient()
    client.add("shardtrain-r-1", log="first job\n")
    monkeypatch.setattr(JobTarget, "client", lambda self: client)
    monkeypatch.setattr(train_module.RayHook, "job_target", lambda self: TARGET)
    monkeypatch.setattr(train_module, "request_id_for", lambda ti: "r")
    monkeypatch.setattr(train_module.TrainOperator, "_collect", lambda self, h, s=None: h)

    real_status = FakeJobClient.get_job_status

    killed = []

    def status(self, sid):  # the earlier try's kill lands while this try waits
        if sid == "shardtrain-r-1" and not killed:
            killed.append(sid)
            JobHandle(sid, _spec("r"), TARGET, _client=self).cancel()
        if sid == "shardtrain-r-2":
            self.jobs[sid]["status"] = "SUCCEEDED"
        return real_status(self, sid)

    monkeypatch.setattr(FakeJobClient, "get_job_status", status)
    op = XGBoostTrainOperator(
        task_id="train",
        path="/data/train.parquet",
        input_cols=["A", "B"],
        label_col="Y",
        artifact_stage_location="/tmp/stage",
        run_as_job=True,
        poll_interval=0,
    )
    pushed = {}
    ti = SimpleNamespace(xcom_push=lambda key, value: pushed.__setitem__(key, value))
    handle = op.execute({"ti": ti})
    assert handle.submission_id == "shardtrain-r-2"
    assert pushed["ray_job"]["submission_id"] == "shardtrain-r-2"


# -- 7 and 10: the trigger ---------------------------------------------------------------------


def test_the_trigger_module_imports_only_airflow_and_the_standard_library():
    """The triggerer imports trigger classes in its event loop: shardtrain, Ray and pyarrow
    (~0.4-0.9 s) are imported in the trigger's thread instead."""
    from shardtrain_airflow.triggers import ray_job

    source = Path(ray_job.__file__)
    top = [
        n for n in ast.parse(source.read_text()).body if isinstance(n, ast.Import | ast.ImportFrom)
    ]
    modules = {
        (n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
        for n in top
        for a in n.names
    }
    assert modules <= {"__future__", "asyncio", "collections", "typing", "airflow"}, modules


def test_the_trigger_resumes_from_its_offset_and_its_event_names_job_and_request(monkeypatch):
    from shardtrain_airflow.triggers import ray_job

    client = FakeJobClient()
    client.add("shardtrain-r-1", "SUCCEEDED", log="line 1\nline 2\nline 3\n")
    spec = _spec("r")

    def handle(self):
        return JobHandle(
            self.submission_id, spec, TARGET, log_offset=self.log_offset, _client=client
        )

    monkeypatch.setattr(ray_job.RayJobTrigger, "_handle", handle)
    trigger = ray_job.RayJobTrigger(
        submission_id="shardtrain-r-1", spec=spec.to_dict(), log_offset=len("line 1\n")
    )
    forwarded = []
    log = SimpleNamespace(info=lambda msg, *a: forwarded.append(msg % a), debug=print)
    monkeypatch.setattr(ray_job.RayJobTrigger, "log", property(lambda self: log))

    async def first_event():
        async for event in trigger.run():
            return event

    event = asyncio.run(first_event()).payload
    assert [x for x in forwarded if x.startswith("[ray job]")] == [
        "[ray job] line 2",
        "[ray job] line 3",
    ]
    assert event == {
        "status": "SUCCEEDED",
        "submission_id": "shardtrain-r-1",
        "request_id": "r",
        "log_offset": len(client.jobs["shardtrain-r-1"]["log"]),
    }
    _, kwargs = trigger.serialize()
    assert kwargs["log_offset"] == event["log_offset"]


def test_the_triggers_on_kill_returns_once_the_job_has_ended(monkeypatch):
    from shardtrain_airflow.triggers import ray_job

    client = FakeJobClient()
    client.add("shardtrain-r-1")
    spec = _spec("r")
    monkeypatch.setattr(
        ray_job.RayJobTrigger,
        "_handle",
        lambda self: JobHandle(self.submission_id, spec, TARGET, _client=client),
    )
    monkeypatch.setattr(handle_module.time, "sleep", lambda s: None)
    trigger = ray_job.RayJobTrigger(submission_id="shardtrain-r-1", spec=spec.to_dict())
    asyncio.run(trigger.on_kill())
    assert client.jobs["shardtrain-r-1"]["status"] == "STOPPED"


def test_a_try_killed_itself_fails_with_its_stopped_job_and_starts_no_other(monkeypatch):
    """Airflow's SIGTERM handler calls on_kill and returns into execute(), whose wait then sees
    the job STOPPED with shardtrain's marker: this try's own stop, not an earlier try's."""
    from shardtrain_airflow.operators import XGBoostTrainOperator
    from shardtrain_airflow.operators import train as train_module

    client = FakeJobClient()
    monkeypatch.setattr(JobTarget, "client", lambda self: client)
    monkeypatch.setattr(train_module.RayHook, "job_target", lambda self: TARGET)
    monkeypatch.setattr(train_module, "request_id_for", lambda ti: "r")
    monkeypatch.setattr(train_module, "shutdown_workers", lambda: None)
    monkeypatch.setattr(handle_module.time, "sleep", lambda s: None)
    op = XGBoostTrainOperator(
        task_id="train",
        path="/data/train.parquet",
        input_cols=["A", "B"],
        label_col="Y",
        artifact_stage_location="/tmp/stage",
        run_as_job=True,
        poll_interval=0,
    )
    real_status = FakeJobClient.get_job_status

    def status(self, sid):  # the SIGTERM arrives while execute() waits
        if not op._killed:
            op.on_kill()
        return real_status(self, sid)

    monkeypatch.setattr(FakeJobClient, "get_job_status", status)
    ti = SimpleNamespace(xcom_push=lambda key, value: None)
    with pytest.raises(JobStoppedError):
        op.execute({"ti": ti})
    assert sorted(client.jobs) == ["shardtrain-r-1", "shardtrain-r-1-stop"]
