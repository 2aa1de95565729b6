"""RayJobTrigger: waits for a shardtrain training job in the triggerer, not in a worker slot.

It polls the job server without blocking the triggerer's event loop: this module imports only
Airflow's trigger base (the triggerer imports trigger classes in its event loop), and shardtrain,
Ray's job client and every job server call are imported and made in a thread. It forwards the
job's new log lines into the task's log as they come, from the offset the task (or an earlier
trigger of the same try) left off at, and fires one event when the job ends. When a user marks
the deferred task failed, clears it or marks it successful, ``on_kill`` stops the job and
returns once it has ended (at most ``STOP_WAIT_S``), so a task that did not succeed publishes
no model and a cleared task's next try starts a new job.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

#: XCom key of the job's log offset, ``{"submission_id", "offset"}``: written by the task when
#: it defers and by the trigger as it forwards, so that a trigger started again (a triggerer
#: restart) resumes where the previous one left off.
LOG_OFFSET_XCOM = "ray_job_log"
#: Seconds ``on_kill`` waits for the stopped job to end (the triggerer gives on_kill 30 s).
STOP_WAIT_S = 20.0
_TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})  # shardtrain.jobs.TERMINAL


class RayJobTrigger(BaseTrigger):
    """Fires ``{"status", "submission_id", "request_id", "log_offset"}`` when the job ends.

    Args:
        submission_id: the job on the job server.
        spec: the job's ``TrainingSpec`` as a dict (no secrets: it is stored in Airflow's DB,
            never logged).
        ray_conn_id: the ``ray`` connection naming the job server (None: the local cluster).
        poll_interval: seconds between status polls.
        log_offset: characters of the job's log already forwarded into the task's log.
    """

    def __init__(
        self,
        *,
        submission_id: str,
        spec: dict[str, Any],
        ray_conn_id: str | None = None,
        poll_interval: float = 2.0,
        log_offset: int = 0,
    ) -> None:
        super().__init__()
        self.submission_id = submission_id
        self.spec = spec
        self.ray_conn_id = ray_conn_id
        self.poll_interval = poll_interval
        self.log_offset = log_offset

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "submission_id": self.submission_id,
                "spec": self.spec,
                "ray_conn_id": self.ray_conn_id,
                "poll_interval": self.poll_interval,
                "log_offset": self.log_offset,
            },
        )

    @property
    def request_id(self) -> str:
        return str(self.spec.get("request_id", ""))

    def _handle(self):
        """The job's handle (in a thread: imports shardtrain and Ray's job client)."""
        from shardtrain.integrations import TrainingSpec
        from shardtrain.jobs import JobHandle
        from shardtrain_airflow.hooks.ray import RayHook

        target = RayHook(self.ray_conn_id).job_target()
        handle = JobHandle(self.submission_id, TrainingSpec.from_dict(self.spec), target)
        handle.log_offset = self.log_offset
        handle.client  # noqa: B018 - the job client connects here, in the thread
        return handle

    def _poll(self, handle) -> tuple[str, list[str]]:
        status = handle.status()
        return status, handle.new_log_lines(final=status in _TERMINAL)

    def _saved_offset(self) -> int | None:
        """The offset an earlier trigger of this try recorded (None outside a triggerer)."""
        ti = getattr(self, "task_instance", None)
        if ti is None:
            return None
        try:
            from airflow.sdk.execution_time.xcom import XCom

            value = XCom.get_one(
                key=LOG_OFFSET_XCOM,
                dag_id=ti.dag_id,
                run_id=ti.run_id,
                task_id=ti.task_id,
                map_index=ti.map_index,
            )
        except Exception as exc:  # noqa: BLE001 - no comms (dag.test): the kwargs' offset
            self.log.debug("no saved log offset: %s", exc)
            return None
        if isinstance(value, dict) and value.get("submission_id") == self.submission_id:
            return int(value.get("offset") or 0)
        return None

    def _save_offset(self, offset: int) -> None:
        ti = getattr(self, "task_instance", None)
        if ti is None:
            return
        try:
            from airflow.sdk.execution_time.xcom import XCom

            XCom.set(
                key=LOG_OFFSET_XCOM,
                value={"submission_id": self.submission_id, "offset": offset},
                dag_id=ti.dag_id,
                run_id=ti.run_id,
                task_id=ti.task_id,
                map_index=ti.map_index,
            )
        except Exception as exc:  # noqa: BLE001 - best effort: at worst lines come again
            self.log.debug("could not save the log offset: %s", exc)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        saved = await asyncio.to_thread(self._saved_offset)
        if saved is not None and saved > self.log_offset:
            self.log_offset = saved
        handle = await asyncio.to_thread(self._handle)
        self.log.info(
            "waiting for Ray job %s (request %s): %s",
            self.submission_id,
            self.request_id,
            handle.dashboard_url,
        )
        while True:
            status, lines = await asyncio.to_thread(self._poll, handle)
            for line in lines:
                self.log.info("[ray job] %s", line)
            if lines:
                self.log_offset = handle.log_offset
                await asyncio.to_thread(self._save_offset, self.log_offset)
            if status in _TERMINAL:
                yield TriggerEvent(
                    {
                        "status": status,
                        "submission_id": self.submission_id,
                        "request_id": self.request_id,
                        "log_offset": self.log_offset,
                    }
                )
                return
            await asyncio.sleep(self.poll_interval)

    async def on_kill(self) -> None:
        """The user killed the task (mark failed / clear / mark success): stop the job and
        return once it has ended (at most ``STOP_WAIT_S``: logged when it has not)."""
        handle = await asyncio.to_thread(self._handle)
        status = await asyncio.to_thread(handle.stop, wait_s=STOP_WAIT_S)
        if status in _TERMINAL:
            self.log.info(
                "stopped Ray job %s (request %s): %s", self.submission_id, self.request_id, status
            )
        else:
            self.log.warning(
                "asked Ray job %s (request %s) to stop; still %s after %.0f s",
                self.submission_id,
                self.request_id,
                status,
                STOP_WAIT_S,
            )
