"""The Ray dashboard of the cluster this process is connected to: what an orchestrator links
to beside a training task (the job's page when this process is a submitted Ray job)."""

from __future__ import annotations

import json
import os

#: Set by Ray for the driver of a submitted job: its config, with the submission id.
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
_OVERRIDE_ENV = "RAY_OVERRIDE_DASHBOARD_URL"  # Ray's own: the dashboard behind a proxy


def dashboard_url() -> str:
    """``http://host:port`` of the dashboard (``.../#/jobs/<id>`` inside a submitted job), or
    "" when this process is not connected or its cluster runs no dashboard."""
    import ray

    if not ray.is_initialized():
        return ""
    url = os.environ.get(_OVERRIDE_ENV) or _webui_url()
    if not url:
        return ""
    url = (url if "://" in url else f"http://{url}").rstrip("/")
    job = _submission_id()
    return f"{url}/#/jobs/{job}" if job else url


def _webui_url() -> str:
    try:
        from ray._private import worker

        node = worker._global_node  # None under Ray Client: it has no dashboard address
        return (node.address_info.get("webui_url") or "") if node is not None else ""
    except (ImportError, AttributeError, KeyError, RuntimeError):  # a Ray without them
        return ""


def _submission_id() -> str:
    try:
        config = json.loads(os.environ.get(_JOB_CONFIG_ENV) or "{}")
    except ValueError:
        return ""
    job = (
        (config.get("metadata") or {}).get("job_submission_id") if isinstance(config, dict) else ""
    )
    return job if isinstance(job, str) else ""
