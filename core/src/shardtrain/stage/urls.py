"""URLs a browser opens for stage locations: what an orchestrator's link or artifact shows.

A bare path or stage URI would resolve against the orchestrator UI's own page, so each
location becomes its console's page (S3, GCS, Snowsight) or a ``file://`` URL. Shared by the
Airflow provider's extra links and the Prefect collection's artifacts.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, urlsplit

_SNOWFLAKE_STAGE = re.compile(r"^@([A-Za-z_][\w$]*)\.([A-Za-z_][\w$]*)\.([A-Za-z_][\w$]*)(/.*)?$")


def browse_url(uri: str | None, *, is_file: bool = False) -> str:
    """A URL a browser opens for a stage location, or "" when there is none.

    S3 and GCS open in their cloud consoles (a folder's listing, or with ``is_file`` the
    object's page), a Snowflake ``@DB.SCHEMA.STAGE`` in Snowsight's stage page, a local stage
    as a ``file://`` URL, an http(s) URL as itself. Locations with no page (``memory://``, a
    user stage ``@~``, a stage without database and schema) get none.
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
        if is_file:
            return f"https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix={quote(key)}"
        return f"https://s3.console.aws.amazon.com/s3/buckets/{bucket}?prefix={quote(key)}/"
    if scheme in ("gs", "gcs"):
        page = "browser/_details" if is_file else "browser"
        return f"https://console.cloud.google.com/storage/{page}/{bucket}/{quote(key)}"
    if scheme in ("http", "https", "file"):
        return uri
    if scheme == "" and uri.startswith("/"):
        return Path(uri).as_uri()
    return ""
