"""A job server address that carries URL user info (``http://user:pass@head:8265``) never
reaches a message, an error's details or a dashboard link: every place the jobs code names
the server goes through ``JobTarget.shown_address``. The job server is an in-process fake
that fails as Ray's client does (``RuntimeError`` quoting the URL)."""

from __future__ import annotations

import pytest

from shardtrain.errors import JobServerError
from shardtrain.integrations import TrainingSpec
from shardtrain.jobs.handle import JobHandle
from shardtrain.jobs.target import JobTarget

PASSWORD = "pa55-never-shown"
ADDRESS = f"http://trainer:{PASSWORD}@ray-head:8265"


class FailingClient:
    """Every call fails the way Ray's JobSubmissionClient does, quoting the address."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise RuntimeError(f"Request failed with status code 500: {ADDRESS}/api/jobs/")

        return fail


@pytest.fixture
def handle(tmp_path):
    spec = TrainingSpec(
        framework="xgboost",
        request_id="req-1",
        artifact_stage_location=str(tmp_path / "stage"),
        train_data={"path": str(tmp_path / "train.parquet")},
        input_cols=["A"],
        label_col="Y",
    )
    return JobHandle(
        "shardtrain-req-1-1", spec, JobTarget(address=ADDRESS), _client=FailingClient()
    )


def test_the_shown_address_and_the_dashboard_link_have_no_user_info():
    target = JobTarget(address=ADDRESS)
    assert target.shown_address == "http://ray-head:8265"
    assert target.dashboard_link("job-1") == "http://ray-head:8265/#/jobs/job-1"


@pytest.mark.parametrize("call", ["status", "all_logs", "cancel"])
def test_job_server_errors_never_show_the_password(handle, call):
    with pytest.raises(JobServerError) as info:
        getattr(handle, call)()
    error = info.value
    assert PASSWORD not in str(error) and "trainer:" not in str(error)
    assert PASSWORD not in repr(error.details)
    assert "ray-head:8265" in str(error) or "ray-head:8265" in error.details.get("address", "")
