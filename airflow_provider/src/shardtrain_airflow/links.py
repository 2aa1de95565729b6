"""Extra links of the training operators."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator, BaseOperatorLink


class ModelLocationLink(BaseOperatorLink):
    """The extra link of a training task: where its model was published."""

    name = "Model location"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(ti_key=ti_key, key="return_value")
        return (value or {}).get("uri", "") if isinstance(value, dict) else ""
