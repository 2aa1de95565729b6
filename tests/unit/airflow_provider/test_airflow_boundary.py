"""Issue 27's Airflow boundary, as logic with in-process fakes (no Ray, no Airflow services):

- connecting to Ray keeps the process's SIGTERM/SIGINT handlers (Airflow's calls on_kill);
- the extra links read a missing XCom without the supervisor's "XCom not found" ERROR;
- a job's log is forwarded once: from an offset, whole lines only, cleaned (ANSI codes, the
  entrypoint's spec, long lines) in messages too;
- a stop shardtrain asked for is recorded, waited for (bounded), and never reattached to;
- the trigger module imports nothing heavy (the triggerer imports it in its event loop), its
  event names the job and request, not the spec, and it resumes from the offset it is given,
  or from the one an earlier trigger of the job recorded (a triggerer restart).
"""

from __future__ import annotations

import ast
import asyncio
import json
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


@pytest.fixture(autouse=True)
def _own_home(monkeypatch, tmp_path):
    """Each test's own $SHARDTRAIN_HOME: the triggers record their log offsets under it."""
    monkeypatch.setenv("SHARDTRAIN_HOME", str(tmp_path / "shardtrain_home"))


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

    def add(self, sid, status="RUNNING", log="", start_time=None):
        start_time = start_time or 1_765_000_000_000 + len(self.jobs)  # ms, as Ray's
        self.jobs[sid] = {"status": status, "log": log, "stop_at": None, "start": start_time}

    def get_job_info(self, sid):
        return SimpleNamespace(status=self.get_job_status(sid), start_time=self.jobs[sid]["start"])

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


def _job_operator():
    """An XGBoost training operator that runs its fit as a Ray Job and polls without delay."""
    from shardtrain_airflow.operators import XGBoostTrainOperator

    return XGBoostTrainOperator(
        task_id="train",
        path="/data/train.parquet",
        input_cols=["A", "B"],
        label_col="Y",
        artifact_stage_location="/tmp/stage",
        run_as_job=True,
        poll_interval=0,
    )


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
    op = _job_operator()
    pushed = {}
    ti = SimpleNamespace(xcom_push=lambda key, value: pushed.__setitem__(key, value))
    handle = op.execute({"ti": ti})
    assert handle.submission_id == "shardtrain-r-2"
    assert pushed["ray_job"]["submission_id"] == "shardtrain-r-2"


# -- 7 and 10: the trigger ---------------------------------------------------------------------


def test_the_trigger_module_imports_only_airflow_and_the_standard_library():
    """The triggerer imports trigger classes in its event loop, and whatever a trigger imports
    later, even in a thread, can stall it: shardtrain's package, Ray and pyarrow (~0.4-1.5 s,
    their C extensions' init holds the GIL) are never imported; httpx comes with Airflow's
    trigger base."""
    from shardtrain_airflow.triggers import ray_job

    tree = ast.parse(Path(ray_job.__file__).read_text())

    def roots(nodes):
        return {
            (n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
            for n in nodes
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in n.names
        }

    stdlib = {"asyncio", "collections", "contextvars", "importlib", "json", "os", "pathlib"}
    stdlib |= {"re", "sys", "typing"}
    assert roots(tree.body) <= {"__future__", "airflow"} | stdlib, roots(tree.body)
    # In functions: httpx (loaded with Airflow's trigger base) and its anyio backend.
    assert roots(ast.walk(tree)) <= {"__future__", "airflow", "httpx", "anyio"} | stdlib


def test_the_job_conventions_are_loaded_without_the_shardtrain_package():
    """The trigger loads shardtrain/jobs/conventions.py by its path: the same rules as
    JobHandle's, from a file that imports only the standard library."""
    from shardtrain.jobs import conventions
    from shardtrain_airflow.triggers import ray_job

    tree = ast.parse(Path(conventions.__file__).read_text())
    imported = {
        (n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert imported <= {"__future__"} | set(sys.stdlib_module_names), imported
    loaded = sys.modules.pop("shardtrain.jobs.conventions")
    try:
        sys.modules.pop(ray_job._CONVENTIONS, None)
        module = ray_job.job_conventions()
    finally:
        sys.modules["shardtrain.jobs.conventions"] = loaded
        sys.modules.pop(ray_job._CONVENTIONS, None)
    assert module is not loaded and module.__file__ == loaded.__file__
    assert module.new_log_lines("a\x1b[31mb\x1b[0m\nc", 0) == (["ab"], len("a\x1b[31mb\x1b[0m\n"))
    assert module.stop_marker_request("j") == {
        "entrypoint": "true",
        "submission_id": handle_module.stop_marker_id("j"),
        "metadata": {"shardtrain_stop_of": "j"},
        "entrypoint_num_cpus": 0,
    }


class FakeJobServer:
    """Ray's job server REST API (the routes the trigger calls) over a FakeJobClient, as an
    in-process httpx transport; it records each request's method, path and headers."""

    def __init__(self, client: FakeJobClient) -> None:
        self.client = client
        self.requests: list[tuple[str, str, dict]] = []

    def transport(self):
        import httpx

        def handle(request: httpx.Request) -> httpx.Response:
            path, method = request.url.path, request.method
            self.requests.append((method, path, dict(request.headers)))
            if (method, path) == ("POST", "/api/jobs/"):
                body = json.loads(request.content)
                try:
                    self.client.submit_job(**body)
                except RuntimeError as exc:  # the server answers with the traceback
                    return httpx.Response(500, text=f"Traceback (most recent call last):\n{exc}")
                return httpx.Response(200, json={"submission_id": body["submission_id"]})
            sid, _, what = path.removeprefix("/api/jobs/").partition("/")
            if sid not in self.client.jobs:
                return httpx.Response(404, text=f"Job {sid} does not exist")
            if (method, what) == ("GET", ""):
                status = self.client.get_job_status(sid)
                start = self.client.jobs[sid]["start"]
                return httpx.Response(200, json={"status": status, "start_time": start})
            if (method, what) == ("GET", "logs"):
                return httpx.Response(200, json={"logs": self.client.get_job_logs(sid)})
            if (method, what) == ("POST", "stop"):
                return httpx.Response(200, json={"stopped": self.client.stop_job(sid)})
            return httpx.Response(405)

        return httpx.MockTransport(handle)


#: What the trigger's on_kill logs first (the stop's outcome follows).
KILLED = ("info", "the task was killed: stopping Ray job shardtrain-r-1 (request r)")


def _trigger_log(monkeypatch, ray_job):
    records: list[tuple[str, str]] = []
    log = SimpleNamespace(
        **{
            level: (lambda msg, *a, level=level: records.append((level, msg % a)))
            for level in ("debug", "info", "warning")
        }
    )
    monkeypatch.setattr(ray_job.RayJobTrigger, "log", property(lambda self: log))
    return records


def test_the_trigger_resumes_from_its_offset_and_its_event_names_job_and_request(monkeypatch):
    from shardtrain_airflow.triggers import ray_job

    client = FakeJobClient()
    client.add("shardtrain-r-1", "SUCCEEDED", log="line 1\nline 2\nline 3\n")
    server = FakeJobServer(client)
    monkeypatch.setattr(ray_job.RayJobTrigger, "transport", server.transport())
    spec = _spec("r")
    trigger = ray_job.RayJobTrigger(
        submission_id="shardtrain-r-1",
        spec=spec.to_dict(),
        log_offset=len("line 1\n"),
        job_server="http://head:8265",
    )
    records = _trigger_log(monkeypatch, ray_job)

    async def first_event():
        async for event in trigger.run():
            return event

    event = asyncio.run(first_event()).payload
    assert [m for _, m in records if m.startswith("[ray job]")] == [
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
    assert (
        "info",
        "waiting for Ray job shardtrain-r-1 (request r): http://head:8265/#/jobs/shardtrain-r-1",
    ) in records


def test_the_trigger_forwards_whole_cleaned_lines_while_the_job_runs(monkeypatch):
    from shardtrain_airflow.triggers import ray_job

    client = FakeJobClient()
    client.add("shardtrain-r-1", log="\x1b[32m[1]\x1b[0m a\n[2] b still being wri")
    server = FakeJobServer(client)
    monkeypatch.setattr(ray_job.RayJobTrigger, "transport", server.transport())
    trigger = ray_job.RayJobTrigger(
        submission_id="shardtrain-r-1",
        spec=_spec("r").to_dict(),
        poll_interval=0,
        job_server="http://head:8265",
    )
    records = _trigger_log(monkeypatch, ray_job)
    polls = 0

    def status(sid):  # the job writes on, then ends with a last line without its newline
        nonlocal polls
        polls += 1
        if polls == 2:
            client.jobs[sid]["log"] += "tten\nlast"
            client.jobs[sid]["status"] = "SUCCEEDED"
        return client.jobs[sid]["status"]

    monkeypatch.setattr(client, "get_job_status", status)

    async def first_event():
        async for event in trigger.run():
            return event

    event = asyncio.run(first_event()).payload
    assert [m for _, m in records if m.startswith("[ray job]")] == [
        "[ray job] [1] a",
        "[ray job] [2] b still being written",
        "[ray job] last",
    ]
    assert event["status"] == "SUCCEEDED"
    assert event["log_offset"] == len(client.jobs["shardtrain-r-1"]["log"])


def _forwarded(records) -> list[str]:
    return [m.removeprefix("[ray job] ") for _, m in records if m.startswith("[ray job]")]


def test_a_trigger_started_again_by_a_triggerer_restart_resumes_where_the_last_one_stopped(
    monkeypatch,
):
    """The triggerer re-creates a trigger from its kwargs (the offset at deferral): it
    resumes from the offset the previous trigger of the job recorded, so no line comes twice
    and none is skipped; the record is written at each poll that forwarded lines."""
    from shardtrain.jobs import conventions
    from shardtrain_airflow.triggers import ray_job

    client = FakeJobClient()
    client.add("shardtrain-r-1", log="entry\n[1] a\n")
    monkeypatch.setattr(ray_job.RayJobTrigger, "transport", FakeJobServer(client).transport())
    kwargs = dict(
        submission_id="shardtrain-r-1",
        spec=_spec("r").to_dict(),
        poll_interval=0.01,
        log_offset=len("entry\n"),  # forwarded by the task before it deferred
        job_server="http://head:8265",
    )
    records = _trigger_log(monkeypatch, ray_job)

    async def until_stopped(trigger):
        """Run the trigger until it has forwarded "[2] b", then cancel it (the triggerer
        stops: SIGTERM cancels its triggers)."""
        task = asyncio.ensure_future(anext(aiter(trigger.run())))
        while "[2] b" not in _forwarded(records):
            await asyncio.sleep(0.01)
            if "[1] a" in _forwarded(records) and "[2] b" not in client.jobs[sid]["log"]:
                client.jobs[sid]["log"] += "[2] b\n[3] c still being wri"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    sid = "shardtrain-r-1"
    asyncio.run(until_stopped(ray_job.RayJobTrigger(**kwargs)))
    assert _forwarded(records) == ["[1] a", "[2] b"]
    recorded = conventions.read_log_offset(sid, client.jobs[sid]["start"])
    assert recorded == len("entry\n[1] a\n[2] b\n")

    # While no triggerer runs, the job writes on and ends; the new triggerer's trigger.
    client.jobs[sid]["log"] += "tten\n[4] d\n"
    client.jobs[sid]["status"] = "SUCCEEDED"
    records.clear()
    again = ray_job.RayJobTrigger(**kwargs)
    event = asyncio.run(anext(aiter(again.run()))).payload
    assert _forwarded(records) == ["[3] c still being written", "[4] d"]
    assert (
        "info",
        f"resuming the log of Ray job {sid} at character {recorded}, where an earlier trigger "
        "of it left off",
    ) in records
    assert event["log_offset"] == len(client.jobs[sid]["log"])
    assert conventions.read_log_offset(sid, client.jobs[sid]["start"]) == event["log_offset"]


def test_a_recorded_offset_of_another_job_with_the_same_id_is_not_used(monkeypatch):
    """A head started again forgets its jobs, and the same request's next job gets the same
    submission id: the record of the earlier job (another start time) is ignored, and a
    broken record is no record."""
    from shardtrain.jobs import conventions
    from shardtrain_airflow.triggers import ray_job

    sid = "shardtrain-r-1"
    client = FakeJobClient()
    client.add(sid, "SUCCEEDED", log="one\ntwo\n", start_time=2_000)
    conventions.write_log_offset(sid, 1_000, len("one\n"))  # the earlier head's job
    assert conventions.read_log_offset(sid, 1_000) == len("one\n")
    assert conventions.read_log_offset(sid, 2_000) == 0
    monkeypatch.setattr(ray_job.RayJobTrigger, "transport", FakeJobServer(client).transport())
    records = _trigger_log(monkeypatch, ray_job)
    trigger = ray_job.RayJobTrigger(
        submission_id=sid, spec=_spec("r").to_dict(), job_server="http://head:8265"
    )
    asyncio.run(anext(aiter(trigger.run())))
    assert _forwarded(records) == ["one", "two"]

    path = conventions.log_offsets_dir() / f"{sid}.json"
    path.write_text("{not json")
    assert conventions.read_log_offset(sid, 2_000) == 0
    path.write_text(json.dumps({"submission_id": "other", "started": 2_000, "offset": 3}))
    assert conventions.read_log_offset(sid, 2_000) == 0


def test_the_first_record_of_a_job_removes_records_older_than_a_week(tmp_path):
    import os

    from shardtrain.jobs import conventions

    conventions.write_log_offset("old", 1, 10, home=tmp_path)
    conventions.write_log_offset("recent", 1, 10, home=tmp_path)
    folder = conventions.log_offsets_dir(tmp_path)
    week_ago = time.time() - conventions.LOG_OFFSET_MAX_AGE_S - 60
    os.utime(folder / "old.json", (week_ago, week_ago))
    conventions.write_log_offset("recent", 1, 20, home=tmp_path)  # not a first record
    assert (folder / "old.json").exists()
    conventions.write_log_offset("new", 1, 5, home=tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["new.json", "recent.json"]
    conventions.forget_log_offset("new", home=tmp_path)
    assert conventions.read_log_offset("new", 1, home=tmp_path) == 0


def test_a_retry_that_reattaches_starts_from_the_furthest_offset_forwarded(monkeypatch):
    """A try reattaching to its job starts past what an earlier try forwarded (the task state
    store) or a trigger recorded on this host (a triggerer that stopped before its event),
    whichever is further; the event's offset, once in the state store, ends the record."""
    from shardtrain.jobs import conventions
    from shardtrain_airflow.operators import train as train_module

    sid = "shardtrain-r-1"
    log = "entry\n[1] a\n[2] b\n[3] c\n"
    client = FakeJobClient()
    client.add(sid, "SUCCEEDED", log=log)  # it ended while no try waited for it
    monkeypatch.setattr(JobTarget, "client", lambda self: client)
    monkeypatch.setattr(train_module.RayHook, "job_target", lambda self: TARGET)
    monkeypatch.setattr(train_module, "request_id_for", lambda ti: "r")
    monkeypatch.setattr(train_module.TrainOperator, "_collect", lambda self, h, s=None: h)

    class Store(dict):
        set = dict.__setitem__

    op = _job_operator()
    lines = []
    monkeypatch.setattr(op, "_job_log", lines.append)
    ti = SimpleNamespace(xcom_push=lambda key, value: None)
    start = client.jobs[sid]["start"]

    def retry(store_offset, recorded):
        lines.clear()
        store = Store(
            {train_module.LOG_OFFSET_STATE: {"submission_id": sid, "offset": store_offset}}
        )
        conventions.forget_log_offset(sid)
        if recorded is not None:
            conventions.write_log_offset(sid, start, recorded)
        handle = op.execute({"ti": ti, "task_state_store": store})
        assert handle.reattached
        return lines[:], store

    forwarded, store = retry(len("entry\n"), len("entry\n[1] a\n[2] b\n"))
    assert forwarded == ["[3] c"]
    assert store[train_module.LOG_OFFSET_STATE] == {"submission_id": sid, "offset": len(log)}
    forwarded, _ = retry(len("entry\n[1] a\n"), None)
    assert forwarded == ["[2] b", "[3] c"]
    forwarded, _ = retry(len("entry\n[1] a\n[2] b\n"), len("entry\n"))
    assert forwarded == ["[3] c"]

    # Back from the triggerer: the event's offset goes to the state store, the record away.
    conventions.write_log_offset(sid, start, len(log))
    store = Store()
    monkeypatch.setattr(op, "training_spec", lambda context: _spec("r"))
    event = {"status": "SUCCEEDED", "submission_id": sid, "request_id": "r", "log_offset": len(log)}
    op.execute_complete({"ti": ti, "task_state_store": store}, event)
    assert store[train_module.LOG_OFFSET_STATE] == {"submission_id": sid, "offset": len(log)}
    assert conventions.read_log_offset(sid, start) == 0


def test_the_trigger_reads_the_token_when_it_runs_and_never_keeps_or_logs_it(monkeypatch, tmp_path):
    """The connection's password, or the local cluster's token file, becomes the bearer
    header of each request; the trigger's kwargs (stored in Airflow's DB) never hold it."""
    from airflow.sdk.definitions.connection import Connection

    from shardtrain_airflow.triggers import ray_job

    client = FakeJobClient()
    client.add("shardtrain-r-1", "SUCCEEDED", log="done\n")
    server = FakeJobServer(client)
    monkeypatch.setattr(ray_job.RayJobTrigger, "transport", server.transport())
    records = _trigger_log(monkeypatch, ray_job)

    async def conn(conn_id):
        assert conn_id == "ray_remote"
        return SimpleNamespace(
            extra_dejson={"job_server": "http://remote:8265"}, password="conn-secret-token"
        )

    monkeypatch.setattr(Connection, "async_get", staticmethod(conn))
    folder = tmp_path / "cluster"
    folder.mkdir()
    (folder / "cluster.json").write_text(
        json.dumps({"dashboard_url": "http://127.0.0.1:8999", "cluster_dir": str(folder)})
    )
    (folder / "auth_token").write_text("local-secret-token\n")
    monkeypatch.setenv("SHARDTRAIN_HOME", str(tmp_path))

    async def first_event(trigger):
        async for event in trigger.run():
            return event

    spec = _spec("r").to_dict()
    cases = [
        (
            ray_job.RayJobTrigger(
                submission_id="shardtrain-r-1", spec=spec, ray_conn_id="ray_remote"
            ),
            "remote:8265",
            "conn-secret-token",
        ),
        (
            ray_job.RayJobTrigger(submission_id="shardtrain-r-1", spec=spec),
            "127.0.0.1:8999",
            "local-secret-token",
        ),
        (
            ray_job.RayJobTrigger(
                submission_id="shardtrain-r-1", spec=spec, job_server="http://127.0.0.1:8777"
            ),
            "127.0.0.1:8777",
            "local-secret-token",
        ),
    ]
    for trigger, host, token in cases:
        server.requests.clear()
        # Three job servers, one fake job: not a trigger started again for the same job.
        ray_job.job_conventions().forget_log_offset("shardtrain-r-1")
        assert asyncio.run(first_event(trigger)).payload["status"] == "SUCCEEDED"
        assert server.requests and all(
            headers["authorization"] == f"Bearer {token}" for _, _, headers in server.requests
        )
        assert all(m.startswith(("waiting for Ray job", "[ray job]")) for _, m in records)
        assert host in records[0][1] and all("secret" not in m for _, m in records)
        assert "secret" not in json.dumps(trigger.serialize())
        records.clear()
    # An address carrying user info is never kept: the connection's is used when it runs.
    trigger = ray_job.RayJobTrigger(
        submission_id="shardtrain-r-1", spec=spec, job_server="http://u:secret@remote:8265"
    )
    assert trigger.serialize()[1]["job_server"] is None


def test_the_triggers_on_kill_records_the_stop_and_returns_once_the_job_has_ended(monkeypatch):
    from shardtrain_airflow.triggers import ray_job

    client = FakeJobClient()
    client.add("shardtrain-r-1")
    server = FakeJobServer(client)
    monkeypatch.setattr(ray_job.RayJobTrigger, "transport", server.transport())
    monkeypatch.setattr(ray_job, "STOP_POLL_S", 0)
    records = _trigger_log(monkeypatch, ray_job)
    spec = _spec("r")
    trigger = ray_job.RayJobTrigger(
        submission_id="shardtrain-r-1", spec=spec.to_dict(), job_server="http://head:8265"
    )
    asyncio.run(trigger.on_kill())
    assert client.jobs["shardtrain-r-1"]["status"] == "STOPPED"
    # The marker JobHandle.cancel submits too: submit() never reattaches to this job.
    marker = client.jobs[handle_module.stop_marker_id("shardtrain-r-1")]
    assert marker["entrypoint"] == "true"
    assert JobHandle("shardtrain-r-1", spec, TARGET, _client=client).stop_requested()
    assert records == [KILLED, ("info", "stopped Ray job shardtrain-r-1 (request r): STOPPED")]
    # A second kill (the marker is there, the job has ended) returns at once, quietly.
    records.clear()
    asyncio.run(trigger.on_kill())
    assert records == [KILLED, ("info", "stopped Ray job shardtrain-r-1 (request r): STOPPED")]


def test_a_cancelled_on_kill_still_stops_the_job_and_logs_how_it_ended(monkeypatch):
    """Airflow 3.3's triggerer awaits on_kill with wait_for, and cancels it again at its next
    state sync (about a second later): the stop goes on, and its outcome is logged after."""
    from shardtrain_airflow.triggers import ray_job

    client = FakeJobClient()
    client.add("shardtrain-r-1")
    client.stopping_polls = 20
    server = FakeJobServer(client)
    monkeypatch.setattr(ray_job.RayJobTrigger, "transport", server.transport())
    monkeypatch.setattr(ray_job, "STOP_POLL_S", 0.01)
    records = _trigger_log(monkeypatch, ray_job)
    trigger = ray_job.RayJobTrigger(
        submission_id="shardtrain-r-1", spec=_spec("r").to_dict(), job_server="http://head:8265"
    )

    async def triggerer():
        run_trigger = asyncio.ensure_future(asyncio.wait_for(trigger.on_kill(), timeout=30))
        while not any(p.endswith("/stop") for _, p, _ in server.requests):
            await asyncio.sleep(0.001)
        run_trigger.cancel()  # the next sync's cancel, while the job is still stopping
        with pytest.raises(asyncio.CancelledError):
            await run_trigger
        assert client.jobs["shardtrain-r-1"]["status"] == "RUNNING"
        while ray_job._STOPPING:
            await asyncio.sleep(0.01)

    asyncio.run(triggerer())
    assert client.jobs["shardtrain-r-1"]["status"] == "STOPPED"
    assert handle_module.stop_marker_id("shardtrain-r-1") in client.jobs
    assert records == [
        KILLED,
        (
            "info",
            "the triggerer cancelled on_kill: the stop of Ray job shardtrain-r-1 goes on, its "
            "outcome is logged in the triggerer's log",
        ),
        ("info", "stopped Ray job shardtrain-r-1 (request r): STOPPED"),
    ]


def test_the_triggers_on_kill_is_bounded_and_says_so_when_the_job_does_not_end(monkeypatch):
    from shardtrain_airflow.triggers import ray_job

    client = FakeJobClient()
    client.add("shardtrain-r-1")
    client.stopping_polls = 10**9  # never ends
    server = FakeJobServer(client)
    monkeypatch.setattr(ray_job.RayJobTrigger, "transport", server.transport())
    monkeypatch.setattr(ray_job, "STOP_WAIT_S", 0.3)
    monkeypatch.setattr(ray_job, "STOP_POLL_S", 0.01)
    records = _trigger_log(monkeypatch, ray_job)
    trigger = ray_job.RayJobTrigger(
        submission_id="shardtrain-r-1", spec=_spec("r").to_dict(), job_server="http://head:8265"
    )
    started = time.monotonic()
    asyncio.run(trigger.on_kill())
    assert time.monotonic() - started < 2
    assert ("POST", "/api/jobs/shardtrain-r-1/stop") in [(m, p) for m, p, _ in server.requests]
    assert records == [
        KILLED,
        ("warning", "asked Ray job shardtrain-r-1 (request r) to stop; still RUNNING after 0 s"),
    ]


def test_the_triggers_on_kill_logs_a_job_server_that_does_not_answer(monkeypatch):
    import httpx

    from shardtrain_airflow.triggers import ray_job

    def refused(request):
        raise httpx.ConnectError("connection refused", request=request)

    monkeypatch.setattr(ray_job.RayJobTrigger, "transport", httpx.MockTransport(refused))
    records = _trigger_log(monkeypatch, ray_job)
    trigger = ray_job.RayJobTrigger(
        submission_id="shardtrain-r-1", spec=_spec("r").to_dict(), job_server="http://head:8265"
    )
    asyncio.run(trigger.on_kill())
    assert records[0] == KILLED and [level for level, _ in records[1:]] == ["warning", "warning"]
    assert "could not record the stop" in records[1][1]
    assert records[2][1].startswith("could not stop Ray job shardtrain-r-1 (request r): no answer")


def test_a_try_killed_itself_fails_with_its_stopped_job_and_starts_no_other(monkeypatch):
    """Airflow's SIGTERM handler calls on_kill and returns into execute(), whose wait then sees
    the job STOPPED with shardtrain's marker: this try's own stop, not an earlier try's."""
    from shardtrain_airflow.operators import train as train_module

    client = FakeJobClient()
    monkeypatch.setattr(JobTarget, "client", lambda self: client)
    monkeypatch.setattr(train_module.RayHook, "job_target", lambda self: TARGET)
    monkeypatch.setattr(train_module, "request_id_for", lambda ti: "r")
    monkeypatch.setattr(train_module, "shutdown_workers", lambda: None)
    monkeypatch.setattr(handle_module.time, "sleep", lambda s: None)
    op = _job_operator()
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


def test_an_in_process_fit_ended_by_its_own_on_kill_says_the_task_was_killed(monkeypatch):
    """Marked failed: on_kill stops the workers and the fit raises WorkerDiedError, whose
    message blames a killed or out-of-memory process; the task's error names the kill."""
    from airflow.sdk.exceptions import AirflowException

    from shardtrain.errors import WorkerDiedError
    from shardtrain_airflow.operators import XGBoostTrainOperator
    from shardtrain_airflow.operators import train as train_module

    monkeypatch.setattr(train_module, "request_id_for", lambda ti: "r")
    monkeypatch.setattr(train_module.RayHook, "connect", lambda self: None)
    monkeypatch.setattr(train_module, "record_dashboard", lambda context, log: None)
    monkeypatch.setattr(train_module, "shutdown_workers", lambda: None)
    op = XGBoostTrainOperator(
        task_id="train",
        path="/data/train.parquet",
        input_cols=["A", "B"],
        label_col="Y",
        artifact_stage_location="/tmp/stage",
        run_as_job=False,
    )

    def killed_fit(spec, **kwargs):
        op.on_kill()  # Airflow's SIGTERM handler, while the fit runs
        raise WorkerDiedError("worker rank 0 died (killed, or out of memory)")

    monkeypatch.setattr(train_module, "run_training", killed_fit)
    with pytest.raises(AirflowException, match="'train' was killed") as raised:
        op.execute({"ti": SimpleNamespace()})
    assert isinstance(raised.value.__cause__, WorkerDiedError)

    def failing_fit(spec, **kwargs):  # not killed: the fit's own error, unchanged
        raise WorkerDiedError("worker rank 0 died")

    op._killed = False
    monkeypatch.setattr(train_module, "run_training", failing_fit)
    with pytest.raises(WorkerDiedError):
        op.execute({"ti": SimpleNamespace()})


def test_two_triggers_of_one_job_never_forward_a_range_twice():
    """During a triggerers' hand-over two triggers of one job may run at once: each records
    the range it forwards before forwarding it, and one that finds the other ahead starts
    where the other ended (or forwards nothing when the other is past its new lines)."""
    from shardtrain.jobs import conventions

    sid = "shardtrain-claim-1"
    assert conventions.claim_log_offset(sid, 7, 0, 10) == 0  # the old trigger: 0-10
    assert conventions.claim_log_offset(sid, 7, 0, 25) == 10  # the new one: from 10
    assert conventions.claim_log_offset(sid, 7, 10, 20) == 25  # the old one again: behind
    assert conventions.read_log_offset(sid, 7) == 25
    assert conventions.claim_log_offset(sid, 8, 0, 5) == 0  # another job, same id
    conventions.forget_log_offset(sid)
    assert not list(conventions.log_offsets_dir(None).glob("shardtrain-claim-1*"))
