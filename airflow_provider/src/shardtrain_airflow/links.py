"""Extra links of the training operators."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator, BaseOperatorLink

#: XCom key under which a task run as a Ray Job records its submission id and dashboard URL.
RAY_JOB_XCOM = "ray_job"


class ModelLocationLink(BaseOperatorLink):
    """The extra link of a training task: where its model was published."""

    name = "Model location"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(ti_key=ti_key, key="return_value")
        return (value or {}).get("uri", "") if isinstance(value, dict) else ""


class RayJobLink(BaseOperatorLink):
    """The extra link of a training task run as a Ray Job: the job's page in the dashboard."""

    name = "Ray job"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(ti_key=ti_key, key=RAY_JOB_XCOM)
        return (value or {}).get("dashboard_url", "") if isinstance(value, dict) else ""
