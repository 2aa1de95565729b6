"""RayJobTrigger: waits for a shardtrain training job in the triggerer, not in a worker slot.

It polls the job server without blocking the triggerer's event loop (the job client is
synchronous; each call runs in a thread), forwards the job's new log lines into the task's
log as they come, and fires one event when the job ends. When a user marks the deferred task
failed, clears it or marks it successful, ``on_kill`` stops the job, so a task that did not
succeed publishes no model.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from shardtrain.integrations import TrainingSpec
from shardtrain.jobs import TERMINAL, JobHandle
from shardtrain_airflow.hooks.ray import RayHook


class RayJobTrigger(BaseTrigger):
    """Fires ``{"status", "submission_id"}`` when the job ends.

    Args:
        submission_id: the job on the job server.
        spec: the job's ``TrainingSpec`` as a dict (no secrets: it is stored in Airflow's DB).
        ray_conn_id: the ``ray`` connection naming the job server (None: the local cluster).
        poll_interval: seconds between status polls.
    """

    def __init__(
        self,
        *,
        submission_id: str,
        spec: dict[str, Any],
        ray_conn_id: str | None = None,
        poll_interval: float = 2.0,
    ) -> None:
        super().__init__()
        self.submission_id = submission_id
        self.spec = spec
        self.ray_conn_id = ray_conn_id
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "submission_id": self.submission_id,
                "spec": self.spec,
                "ray_conn_id": self.ray_conn_id,
                "poll_interval": self.poll_interval,
            },
        )

    async def _handle(self) -> JobHandle:
        target = await asyncio.to_thread(RayHook(self.ray_conn_id).job_target)
        return JobHandle(self.submission_id, TrainingSpec.from_dict(self.spec), target)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        handle = await self._handle()
        self.log.info("waiting for Ray job %s: %s", self.submission_id, handle.dashboard_url)
        while True:
            status = await asyncio.to_thread(handle.status)
            for line in (await asyncio.to_thread(handle.logs)).splitlines():
                self.log.info("[ray job] %s", line)
            if status in TERMINAL:
                yield TriggerEvent(
                    {"status": status, "submission_id": self.submission_id, "spec": self.spec}
                )
                return
            await asyncio.sleep(self.poll_interval)

    async def on_kill(self) -> None:
        """The user killed the task (mark failed / clear / mark success): stop the job."""
        handle = await self._handle()
        stopped = await asyncio.to_thread(handle.cancel)
        self.log.info("stopped Ray job %s (was running: %s)", self.submission_id, stopped)
