"""Extra links of the training operators: URLs a browser opens (a bare path or stage URI
would resolve against the Airflow UI's own page)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from airflow.sdk import BaseOperator, BaseOperatorLink

#: XCom key under which a task run as a Ray Job records its submission id and dashboard URL.
RAY_JOB_XCOM = "ray_job"


_SNOWFLAKE_STAGE = re.compile(r"^@([A-Za-z_][\w$]*)\.([A-Za-z_][\w$]*)\.([A-Za-z_][\w$]*)(/.*)?$")


def model_url(uri: str | None) -> str:
    """A URL a browser opens for a model location, or "" when there is none.

    S3 and GCS open in their cloud consoles, a Snowflake ``@DB.SCHEMA.STAGE`` in Snowsight's
    stage page, a local stage as a ``file://`` URL, an http(s) URL as itself. Locations with no
    page (``memory://``, a user stage ``@~``, a stage without database and schema) get none.
    """
    if not uri:
        return ""
    if uri.startswith("@"):
        match = _SNOWFLAKE_STAGE.match(uri)
        if not match:
            return ""
        database, schema, stage = (quote(part) for part in match.groups()[:3])
        return (
            "https://app.snowflake.com/_deeplink/#/data/databases/"
            f"{database}/schemas/{schema}/stage/{stage}"
        )
    parts = urlsplit(uri)
    scheme, bucket, key = parts.scheme, parts.netloc, parts.path.strip("/")
    if scheme in ("s3", "s3a"):
        return f"https://s3.console.aws.amazon.com/s3/buckets/{bucket}?prefix={quote(key)}/"
    if scheme in ("gs", "gcs"):
        return f"https://console.cloud.google.com/storage/browser/{bucket}/{quote(key)}"
    if scheme in ("http", "https", "file"):
        return uri
    if scheme == "" and uri.startswith("/"):
        return Path(uri).as_uri()
    return ""


class ModelLocationLink(BaseOperatorLink):
    """The extra link of a training task: where its model was published."""

    name = "Model location"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(ti_key=ti_key, key="return_value")
        return model_url(value.get("uri") if isinstance(value, dict) else None)


class RayJobLink(BaseOperatorLink):
    """The extra link of a training task run as a Ray Job: the job's page in the dashboard."""

    name = "Ray job"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(ti_key=ti_key, key=RAY_JOB_XCOM)
        return (value or {}).get("dashboard_url", "") if isinstance(value, dict) else ""
