"""RayJobTrigger: waits for a shardtrain training job in the triggerer, not in a worker slot.

The triggerer runs every trigger in one event loop, and anything that holds the GIL stalls
them all ("likely caused by a badly-written trigger"). So this trigger never imports
shardtrain's package, Ray or pyarrow (their C extensions' init holds the GIL even in a
thread): it talks to the Ray job server's REST API with Airflow's own async HTTP client
(httpx), shares the job conventions of ``JobHandle`` through ``shardtrain/jobs/conventions.py``
(standard library only, loaded by its path), and resolves the job server from what the task
resolved when it deferred, the ``ray`` connection or the local cluster's record (plain JSON
and a token file). The job server's token is read at run time, never kept in the trigger's
kwargs (Airflow stores them in its database) nor logged.

It makes no request to the triggerer's supervisor (an XCom or, with a ``ray`` connection,
its one read at start): in a triggerer the first such request builds the in-process execution
API (measured 38 s under load), and the supervisor, which delivers every cancellation and
event, is blocked meanwhile (and then reassigns the triggers it thinks deadlocked).

It forwards the job's new log lines into the task's log as they come, from the offset the
task left off at when it deferred, and fires one event when the job ends, with the offset the
task's next try starts from. Before it forwards new lines it records the offset they reach
in a small file keyed by the job (``$SHARDTRAIN_HOME/jobs/log_offsets/<submission id>.json``,
written in a thread under a lock, with the job's start time so that a later job of the same
id is not taken for it): a trigger started again by a triggerer restart resumes from there,
not from the offset at deferral, and of two triggers of the job running at once during the
hand-over, only one forwards each line. (Airflow 3.3's triggerer offers no task state store to a trigger, and
an XCom goes through its supervisor: see above.) A triggerer that comes back on another host
does not see the file and forwards again the lines since the deferral. When a user marks the deferred task failed, clears it or marks it successful, the
triggerer awaits ``on_kill`` (at most ``[triggerer] on_kill_timeout``, 30 s by default): it
records the stop (the marker job ``JobHandle.cancel`` submits too), stops the job and returns
once it has ended, at most ``STOP_WAIT_S`` later (logged when it has not), so a task that did
not succeed publishes no model and a cleared task's next try starts a new job.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

#: Seconds ``on_kill`` takes at most to stop the job and see it end (the triggerer gives
#: on_kill 30 s).
STOP_WAIT_S = 20.0
#: Seconds between status polls while ``on_kill`` waits for the stopped job to end.
STOP_POLL_S = 0.25
#: Seconds one request to the job server may take.
REQUEST_TIMEOUT_S = 10.0
#: A log response larger than this is decoded in a thread (the job server sends the whole log).
DECODE_IN_THREAD_BYTES = 256 * 1024
#: The name ``shardtrain/jobs/conventions.py`` is loaded under when the package is not imported.
_CONVENTIONS = "_shardtrain_job_conventions"
#: The stops ``on_kill`` started, kept until they end (the event loop holds tasks weakly).
_STOPPING: set[asyncio.Task] = set()
_USER_INFO = re.compile(r"(?<=//)[^/@\s]*@")


def job_conventions():
    """``shardtrain.jobs.conventions`` (job states, log line cleaning, stop marker), loaded
    from its file without importing the ``shardtrain`` package, whose ``__init__`` imports
    pyarrow. Call it in a thread the first time (it reads and compiles a small file)."""
    module = sys.modules.get("shardtrain.jobs.conventions") or sys.modules.get(_CONVENTIONS)
    if module is not None:
        return module
    package = importlib.util.find_spec("shardtrain")  # a top-level package: found, not imported
    folders = (package.submodule_search_locations or []) if package else []
    paths = [Path(folder, "jobs", "conventions.py") for folder in folders]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        raise ModuleNotFoundError(
            "shardtrain is not installed where the triggerer runs: install shardtrain with "
            "airflow-provider-shardtrain in the triggerer's environment."
        )
    spec = importlib.util.spec_from_file_location(_CONVENTIONS, path)
    assert spec is not None and spec.loader is not None  # a .py file has a source loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[_CONVENTIONS] = module
    return module


def shown_address(address: str) -> str:
    """A job server address as it may be logged (user info in the URL removed)."""
    return _USER_INFO.sub("", address)


def _extra(extra: dict[str, Any], name: str) -> Any:
    """An extra field of the ``ray`` connection, plain or with the form's prefix (as RayHook)."""
    value = extra.get(name)
    return value if value not in (None, "") else extra.get(f"extra__ray__{name}") or None


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def local_cluster_server() -> tuple[str | None, str | None]:
    """The local cluster's job server and token, from ``$SHARDTRAIN_HOME/cluster`` (its
    ``cluster.json`` record and ``auth_token`` file, as ``LocalCluster`` keeps them), read with
    the standard library: (None, None) for what is not there. Blocking file reads: call it in
    a thread."""
    home = os.environ.get("SHARDTRAIN_HOME", "")
    folder = Path(home) if home.strip() else Path.home() / ".shardtrain"
    folder = folder / "cluster"
    try:
        record = json.loads((folder / "cluster.json").read_text())
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict):
        record = {}
    address = record.get("dashboard_url") or None
    try:
        token = (Path(record.get("cluster_dir") or folder) / "auth_token").read_text().strip()
    except OSError:
        token = None
    return address, token or None


class RayJobServerError(RuntimeError):
    """The job server did not answer, or answered with an error (the message names no token).

    ``status_code`` and ``text`` are the error's answer (None and "" without one)."""

    def __init__(self, message: str, *, status_code: int | None = None, text: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.text = text


class JobServer:
    """The Ray job server's REST API for one job, over an ``httpx.AsyncClient`` (its headers
    hold the bearer token: the client is never logged). Use it as an async context manager."""

    def __init__(self, client: Any, address: str, submission_id: str) -> None:
        self.client = client
        self.address = address
        self.submission_id = submission_id

    async def __aenter__(self) -> JobServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    @property
    def dashboard_url(self) -> str:
        """The job's page in the Ray dashboard (as ``JobTarget.dashboard_link``)."""
        return f"{shown_address(self.address)}/#/jobs/{self.submission_id}"

    async def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        import httpx  # loaded with airflow.triggers.base: no import cost here

        try:
            response = await self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise RayJobServerError(
                f"no answer from the Ray job server at {shown_address(self.address)} to "
                f"{method} {path} ({type(exc).__name__}: {str(exc)[:300]})"
            ) from exc
        if response.status_code != 200:
            text = response.text
            last = text.strip().splitlines()[-1:] or [""]  # an error's traceback ends with it
            raise RayJobServerError(
                f"the Ray job server at {shown_address(self.address)} answered {method} {path} "
                f"with {response.status_code}: {last[0][:300]}",
                status_code=response.status_code,
                text=text,
            )
        content = response.content
        if len(content) > DECODE_IN_THREAD_BYTES:
            return await asyncio.to_thread(json.loads, content)
        return json.loads(content)

    async def info(self) -> dict[str, Any]:
        """The job's details (``GET /api/jobs/<id>``): ``status``, ``start_time``, ..."""
        return await self._request("GET", f"/api/jobs/{self.submission_id}")

    async def status(self) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED (``GET /api/jobs/<id>``)."""
        return str((await self.info())["status"])

    async def logs(self) -> str:
        """The job's whole log so far (``GET /api/jobs/<id>/logs``)."""
        body = await self._request("GET", f"/api/jobs/{self.submission_id}/logs")
        return str(body.get("logs") or "")

    async def stop(self) -> bool:
        """Ask the job to stop (``POST /api/jobs/<id>/stop``): True when it was running."""
        body = await self._request("POST", f"/api/jobs/{self.submission_id}/stop")
        return bool(body.get("stopped"))

    async def mark_stop(self, conventions: Any) -> None:
        """Record that shardtrain asked for the stop: the marker job ``JobHandle.cancel``
        submits (``POST /api/jobs/``); one already there is fine, a failure is raised."""
        body = conventions.stop_marker_request(self.submission_id)
        try:
            await self._request("POST", "/api/jobs/", body)
        except RayJobServerError as exc:
            if "already exists" not in exc.text:
                raise


class RayJobTrigger(BaseTrigger):
    """Fires ``{"status", "submission_id", "request_id", "log_offset"}`` when the job ends.

    Args:
        submission_id: the job on the job server.
        spec: the job's ``TrainingSpec`` as a dict (no secrets: it is stored in Airflow's DB,
            never logged).
        ray_conn_id: the ``ray`` connection naming the job server (None: the local cluster).
            Its token (the connection's password) is read when the trigger runs.
        poll_interval: seconds between status polls.
        log_offset: characters of the job's log already forwarded into the task's log.
        job_server: the job server's address as the task resolved it when it deferred (no
            token; one with user info is dropped); None: resolved from the connection or the
            local cluster's record.
    """

    def __init__(
        self,
        *,
        submission_id: str,
        spec: dict[str, Any],
        ray_conn_id: str | None = None,
        poll_interval: float = 2.0,
        log_offset: int = 0,
        job_server: str | None = None,
    ) -> None:
        super().__init__()
        self.submission_id = submission_id
        self.spec = spec
        self.ray_conn_id = ray_conn_id
        self.poll_interval = poll_interval
        self.log_offset = log_offset
        # An address with user info carries a credential: never kept in the kwargs (Airflow's
        # DB); the trigger resolves it from the connection when it runs.
        self.job_server = job_server if job_server and not _USER_INFO.search(job_server) else None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "submission_id": self.submission_id,
                "spec": self.spec,
                "ray_conn_id": self.ray_conn_id,
                "poll_interval": self.poll_interval,
                "log_offset": self.log_offset,
                "job_server": self.job_server,
            },
        )

    @property
    def request_id(self) -> str:
        return str(self.spec.get("request_id", ""))

    # -- the job server ---------------------------------------------------------------------

    #: An ``httpx`` transport for the job server's client (None: the network; tests give an
    #: ``httpx.MockTransport``).
    transport: Any = None

    async def _server_address_and_headers(self) -> tuple[str, dict[str, str]]:
        """The job server and its request headers (the bearer token: never logged): the
        connection's ``job_server`` and password, else the local cluster's record and token
        file; an address the task resolved when it deferred comes first."""
        if self.ray_conn_id:
            from airflow.sdk.definitions.connection import Connection

            conn = await Connection.async_get(self.ray_conn_id)
            server = _extra(conn.extra_dejson or {}, "job_server")
            if server:
                return self.job_server or server, _bearer(conn.password or None)
        address, token = await asyncio.to_thread(local_cluster_server)
        address = self.job_server or address
        if not address:
            raise RayJobServerError(
                f"no job server for Ray job {self.submission_id}: the ray connection "
                f"{self.ray_conn_id!r} names none and no local cluster is recorded under "
                "$SHARDTRAIN_HOME/cluster (it was stopped: its jobs are gone)."
                if self.ray_conn_id
                else f"no job server for Ray job {self.submission_id}: no local cluster is "
                "recorded under $SHARDTRAIN_HOME/cluster (it was stopped: its jobs are gone)."
            )
        return address, _bearer(token)

    async def _job_server(self) -> JobServer:
        address, headers = await self._server_address_and_headers()
        address = address.rstrip("/")

        def client():  # not in the event loop: its TLS context takes ~30 ms to build, and
            # the first request of an AsyncClient imports anyio's asyncio backend and socket
            # streams (~50 ms, 0.26 s under load), imported here first
            import anyio._backends._asyncio  # noqa: F401
            import anyio.streams.tls  # noqa: F401
            import httpx

            return httpx.AsyncClient(
                base_url=address,
                headers=headers,
                timeout=REQUEST_TIMEOUT_S,
                transport=self.transport,
            )

        return JobServer(await asyncio.to_thread(client), address, self.submission_id)

    # -- the triggerer's calls ----------------------------------------------------------------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        conventions = await asyncio.to_thread(job_conventions)
        async with await self._job_server() as server:
            info = await server.info()
            started = info.get("start_time")
            await self._resume_log(conventions, started)
            self.log.info(
                "waiting for Ray job %s (request %s): %s",
                self.submission_id,
                self.request_id,
                server.dashboard_url,
            )
            while True:
                status = str(info["status"])
                final = status in conventions.TERMINAL
                logs = await server.logs()
                lines, offset = conventions.new_log_lines(logs, self.log_offset, final=final)
                if offset != self.log_offset:
                    begin = await self._claim_log_range(conventions, started, offset)
                    if begin > self.log_offset:  # another trigger of this job forwarded these
                        lines = (
                            conventions.new_log_lines(logs, begin, final=final)[0]
                            if begin < offset
                            else []
                        )
                    self.log_offset = max(offset, begin)
                for line in lines:
                    self.log.info("[ray job] %s", line)
                if final:
                    break
                await asyncio.sleep(self.poll_interval)
                info = await server.info()
        yield TriggerEvent(
            {
                "status": status,
                "submission_id": self.submission_id,
                "request_id": self.request_id,
                "log_offset": self.log_offset,
            }
        )

    async def _resume_log(self, conventions: Any, started: int | None) -> None:
        """Move ``log_offset`` past what an earlier trigger of this job forwarded (one that
        ran before a triggerer restart): its record, when it is further than the kwargs'."""
        saved = await asyncio.to_thread(conventions.read_log_offset, self.submission_id, started)
        if saved > self.log_offset:
            self.log.info(
                "resuming the log of Ray job %s at character %d, where an earlier trigger of "
                "it left off",
                self.submission_id,
                saved,
            )
            self.log_offset = saved

    async def _claim_log_range(self, conventions: Any, started: int | None, end: int) -> int:
        """Record, before forwarding, that this trigger forwards the log up to ``end``; where
        its forwarding starts (later than ``log_offset`` when another trigger of the job, run
        at once during a triggerers' hand-over, already forwarded past it). In a thread; at
        worst, when the record cannot be written, a restarted trigger forwards these lines
        again."""
        try:
            return await asyncio.to_thread(
                conventions.claim_log_offset, self.submission_id, started, self.log_offset, end
            )
        except OSError as exc:
            self.log.debug("could not record the log offset of %s: %s", self.submission_id, exc)
            return self.log_offset

    async def on_kill(self) -> None:
        """The user killed the task (mark failed / clear / mark success): record the stop,
        stop the job and return once it has ended, at most ``STOP_WAIT_S`` later (logged when
        it has not). Only awaits: the event loop is never blocked.

        Airflow 3.3's triggerer cancels ``on_kill`` itself at its next state sync (about a
        second later: the trigger stays in the cancel list it sends until it has finished), so
        the stop runs in a task of its own that outlives a cancelled ``on_kill``: the stop is
        recorded and requested all the same, and its outcome is then logged in the
        triggerer's log (the trigger's log is closed by then)."""
        self.log.info(
            "the task was killed: stopping Ray job %s (request %s)",
            self.submission_id,
            self.request_id,
        )
        # A context of its own: what it logs after this trigger has finished never carries
        # this trigger's id (a later trigger may get the same id).
        stop = asyncio.get_running_loop().create_task(
            self._stop_job(), context=contextvars.Context()
        )
        _STOPPING.add(stop)
        stop.add_done_callback(_STOPPING.discard)
        try:
            await asyncio.shield(stop)
        except asyncio.CancelledError:
            if stop.done():
                self._log_stop(stop)
            else:
                self.log.info(
                    "the triggerer cancelled on_kill: the stop of Ray job %s goes on, its "
                    "outcome is logged in the triggerer's log",
                    self.submission_id,
                )
                stop.add_done_callback(self._log_stop, context=contextvars.Context())
            raise
        self._log_stop(stop)

    async def _stop_job(self) -> tuple[str, str, list[str]]:
        """Record the stop (the marker job), stop the job and wait, at most ``STOP_WAIT_S``,
        for it to end: (outcome, status, notes), outcome ``stopped``, ``timeout`` or
        ``error`` (then ``status`` is the error). It logs nothing itself (see on_kill)."""
        status, notes = "unknown", []
        try:
            async with asyncio.timeout(STOP_WAIT_S):
                conventions = await asyncio.to_thread(job_conventions)
                async with await self._job_server() as server:
                    try:
                        await server.mark_stop(conventions)
                    except RayJobServerError as exc:  # as JobHandle.cancel: stop all the same
                        notes.append(
                            f"could not record the stop of Ray job {self.submission_id}: {exc}"
                        )
                    await server.stop()
                    while (status := await server.status()) not in conventions.TERMINAL:
                        await asyncio.sleep(STOP_POLL_S)
        except TimeoutError:
            return "timeout", status, notes
        except Exception as exc:  # noqa: BLE001 - reported by on_kill or its callback
            return "error", str(exc), notes
        return "stopped", status, notes

    def _log_stop(self, stop: asyncio.Task) -> None:
        if stop.cancelled():  # the triggerer shut down meanwhile
            self.log.warning("the stop of Ray job %s was cancelled", self.submission_id)
            return
        outcome, status, notes = stop.result()
        for note in notes:
            self.log.warning("%s", note)
        if outcome == "stopped":
            self.log.info(
                "stopped Ray job %s (request %s): %s", self.submission_id, self.request_id, status
            )
        elif outcome == "timeout":
            self.log.warning(
                "asked Ray job %s (request %s) to stop; still %s after %.0f s",
                self.submission_id,
                self.request_id,
                status,
                STOP_WAIT_S,
            )
        else:
            self.log.warning(
                "could not stop Ray job %s (request %s): %s",
                self.submission_id,
                self.request_id,
                status,
            )
