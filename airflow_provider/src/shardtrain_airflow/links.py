"""Extra links of the training operators: URLs a browser opens (a bare path or stage URI
would resolve against the Airflow UI's own page)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator, BaseOperatorLink

from shardtrain.model.curves import curves_uri
from shardtrain.runtime.dashboard import dashboard_url
from shardtrain.stage.urls import browse_url

#: XCom key under which a task run as a Ray Job records its submission id and dashboard URL.
RAY_JOB_XCOM = "ray_job"
#: XCom key under which a task training in its own process records its cluster's dashboard.
RAY_DASHBOARD_XCOM = "ray_dashboard"


def xcom_value(ti_key: Any, key: str) -> Any:
    """The task instance's XCom ``key``, or None when it has none, asked so that a missing
    XCom logs nothing: a link is computed whenever a task ends or defers, often before its
    XComs exist (or in a mode that never writes them), and the task supervisor logs every
    missing XCom read as an "XCom not found" ERROR. So the XComs under ``key`` are counted
    first (a request that answers 0 instead of 404) and only an existing one is read."""
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.xcom import XCom

    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    if comms is not None:
        from airflow.sdk.execution_time.comms import GetXComCount, XComCountResponse

        count = comms.send(
            GetXComCount(
                key=key, dag_id=ti_key.dag_id, run_id=ti_key.run_id, task_id=ti_key.task_id
            )
        )
        if isinstance(count, XComCountResponse) and count.len == 0:
            return None
    return XCom.get_value(ti_key=ti_key, key=key)


def model_url(uri: str | None) -> str:
    """A URL a browser opens for a model location, or "" when there is none (see
    ``shardtrain.stage.urls.browse_url``: the Prefect collection's artifacts use it too)."""
    return browse_url(uri)


class ModelLocationLink(BaseOperatorLink):
    """The extra link of a training task: where its model was published."""

    name = "Model location"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        value = xcom_value(ti_key, "return_value")
        return model_url(value.get("uri") if isinstance(value, dict) else None)


class RayJobLink(BaseOperatorLink):
    """The extra link of a training task run as a Ray Job: the job's page in the dashboard."""

    name = "Ray job"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        value = xcom_value(ti_key, RAY_JOB_XCOM)
        return (value or {}).get("dashboard_url", "") if isinstance(value, dict) else ""


class TrainingCurveLink(BaseOperatorLink):
    """The extra link of a training task: the image of its per-round metrics, published beside
    the model (``shardtrain.model.curves``), where the stage has a browsable URL."""

    name = "Training curve"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        value = xcom_value(ti_key, "return_value")
        uri = curves_uri(value) if isinstance(value, dict) else None
        return browse_url(uri, is_file=True)


class RayDashboardLink(BaseOperatorLink):
    """The extra link of a training task: its Ray cluster's dashboard (the job's page when
    it ran as a Ray Job), when the cluster runs one."""

    name = "Ray dashboard"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        value = xcom_value(ti_key, RAY_DASHBOARD_XCOM)
        if isinstance(value, str) and value:
            return value
        job = xcom_value(ti_key, RAY_JOB_XCOM)
        return (job or {}).get("dashboard_url", "") if isinstance(job, dict) else ""


def record_dashboard(context: Any, log: Any) -> None:
    """Name the connected cluster's dashboard in the task log and record it for
    ``RayDashboardLink`` (before training: a failed task links to it too)."""
    url = dashboard_url()
    if url:
        log.info("Ray dashboard: %s", url)
        context["ti"].xcom_push(key=RAY_DASHBOARD_XCOM, value=url)
