"""Shared fixtures: real services started once per test session, and the suite's markers.

Ray, a Snowpark local_testing session and an S3-compatible server (moto, on loopback) are
started lazily: only the tests that ask for them pay for them.

The suite has three layers (CONTRIBUTING.md): tests/unit (logic only: its conftest refuses
processes, sockets and Ray), tests/integration (the session's Ray head, Airflow's
``dag.test()`` in this process, the Prefect harness, moto, Snowpark local_testing) and
tests/system (real processes end to end). Every test gets its layer's marker and a marker
for each resource it uses (``ray``, ``airflow``, ``prefect``, ``jobs``, ``subprocess``,
``rig``, ``s3``, ``snowpark``): from its fixtures here, from a module's ``pytestmark``
where no fixture shows it. ``-m "not system"`` or ``-m "not ray"`` select by them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import temp_folder

# Prefect reads these when it is first imported: set them before any test module imports it.
if "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = temp_folder("prefect-home-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.3")


# Airflow writes its config under AIRFLOW_HOME when first imported: keep it out of ~/airflow.
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = temp_folder("airflow-home-")


LAYERS = ("unit", "integration", "system")

#: The resource each service fixture stands for.
FIXTURE_MARKERS = {
    "ray_head": "ray",
    "ray_cluster": "ray",
    "prefect_harness": "prefect",
    "airflow_env": "airflow",
    "airflow_db": "airflow",
    "s3_server": "s3",
    "snowpark_session": "snowpark",
}


def pytest_collection_modifyitems(config, items):
    """Each test's layer (its folder under tests/) and the resources its fixtures start."""
    root = Path(__file__).parent
    for item in items:
        relative = Path(item.path).relative_to(root).parts
        layer = relative[0] if relative and relative[0] in LAYERS else None
        if layer is None:
            raise pytest.UsageError(
                f"{item.nodeid} is outside the three layers: move it under tests/unit, "
                "tests/integration or tests/system"
            )
        item.add_marker(layer)
        for fixture in set(getattr(item, "fixturenames", ())) & FIXTURE_MARKERS.keys():
            item.add_marker(FIXTURE_MARKERS[fixture])


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """Keep every default location (stage, registry, the local Ray head) inside the test
    session's temp dir; a head that any test or subprocess started there is stopped at the end."""
    home = tmp_path_factory.mktemp("shardtrain_home")
    os.environ["SHARDTRAIN_HOME"] = str(home)
    yield home
    # Every head a test started in its own home under this session's temp dir, then this one.
    base = tmp_path_factory.getbasetemp()
    for depth in ("*", "*/*", "*/*/*"):
        for record in base.glob(f"{depth}/cluster/cluster.json"):
            _stop_local_head(record.parent.parent)
    _stop_local_head(home)


def _stop_local_head(home) -> None:
    import shutil

    from shardtrain.runtime import local_cluster

    os.environ["SHARDTRAIN_HOME"] = str(home)
    local_cluster.stop()
    link = home / "cluster" / "ray"  # Ray's temp dir is under /tmp when the home is long
    if link.is_symlink():
        shutil.rmtree(link.resolve(), ignore_errors=True)


@pytest.fixture(scope="session")
def ray_head(_isolated_home):
    """The session's long-lived local Ray head (2 CPUs, dashboard and job server on), started
    through ``local_cluster`` in the session's $SHARDTRAIN_HOME and stopped at the end.

    Yields its ``LocalCluster`` record: ``job_client()`` reaches its job server, and every
    process the tests start with this home joins the same head.
    """
    from shardtrain.runtime import local_cluster

    saved = os.environ.get("SHARDTRAIN_CLUSTER_IDLE_S")
    os.environ["SHARDTRAIN_CLUSTER_IDLE_S"] = "3600"  # outlives a long session; stopped below
    try:
        head = local_cluster.ensure(num_cpus=2)
    finally:
        if saved is None:
            os.environ.pop("SHARDTRAIN_CLUSTER_IDLE_S")
        else:
            os.environ["SHARDTRAIN_CLUSTER_IDLE_S"] = saved
    yield head
    import ray

    ray.shutdown()
    _stop_local_head(_isolated_home)


@pytest.fixture(scope="session")
def ray_cluster(ray_head):
    """This test process joined to the session's local head (joining costs well under 1 s)."""
    import sys

    import ray

    from shardtrain.runtime import local_cluster

    if not ray.is_initialized():
        # Workers import test modules by name (functions and actors defined in tests).
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        local_cluster.join(
            ray_head, runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def snowpark_session():
    """A Snowpark session in local_testing mode (no live account is reachable here).

    Closed with ``close_session``: it also unregisters the exit hook Snowpark registers for
    every session. ``Session.close()`` alone leaves the hook, which closes the session again
    at interpreter exit and logs into pytest's streams, closed by then ("Logging error ...
    I/O operation on closed file")."""
    from snowflake.snowpark import Session

    from shardtrain.integrations import close_session

    session = Session.builder.config("local_testing", True).create()
    yield session
    close_session(session)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto in server mode) on loopback.

    Yields the fsspec ``storage_options`` that reach it. The credentials are dummies that the
    tests also use to check nothing leaks them.
    """
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {
        "key": "AKIATESTKEY0000SECRET",
        "secret": "s3cr3t-test-value-never-logged",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=options["key"],
        aws_secret_access_key=options["secret"],
    ).create_bucket(Bucket="shardtrain-test")
    yield options
    server.stop()


_CREATE_MLFLOW_DB = """
import sys
from mlflow import MlflowClient

client = MlflowClient(tracking_uri=sys.argv[1], registry_uri=sys.argv[1])
client.search_experiments()
client.search_registered_models()
"""


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty sqlite MLflow registry, created once per session (in a subprocess: this
    process's logging stays as it was). MLflow creates and migrates a new database on first
    use, ~10 s here; tests whose subject is not that first use start from a copy of this one
    (``mlflow_registry``), which holds the same schema and nothing else."""
    folder = tmp_path_factory.mktemp("mlflow_template")
    path = folder / "mlflow.db"
    subprocess.run(
        [sys.executable, "-c", _CREATE_MLFLOW_DB, f"sqlite:///{path}"],
        cwd=folder,  # MLflow's Default experiment points at ./mlruns: keep it in here
        check=True,
        capture_output=True,
        timeout=300,
    )
    return path


@pytest.fixture
def mlflow_registry(mlflow_template, tmp_path) -> str:
    """The URI of an empty sqlite MLflow registry at ``tmp_path / "mlflow.db"``."""
    from tests.helpers import seed_mlflow_registry

    return seed_mlflow_registry(mlflow_template, tmp_path / "mlflow.db")


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory, request):
    """Airflow with its own $SHARDTRAIN_HOME (stage, default registry, example data) whose
    local head is the session's: its ``cluster`` folder (record, lock, token) is the session
    home's, so DAG runs find and join that head as they would their own (starting a second
    head cost ~10 s and a core's tenth all session). The default registry starts as a copy of
    an empty one: MLflow's first-use creation is tests/integration/core/test_registry*.py's subject.

    ``airflow db migrate`` runs while the session's head and registry template are made."""
    from tests.helpers import REPO, AirflowEnv, airflow_db_migrating, seed_mlflow_registry

    root = tmp_path_factory.mktemp("airflow")
    dags = root / "dags"
    shutil.copytree(REPO / "dags", dags)
    env = AirflowEnv(root / "home", dags, root / "shardtrain")
    with airflow_db_migrating(env.env):
        ray_head = request.getfixturevalue("ray_head")
        template = request.getfixturevalue("mlflow_template")
    env.shardtrain_home.mkdir()
    (env.shardtrain_home / "cluster").symlink_to(ray_head.cluster_dir, target_is_directory=True)
    seed_mlflow_registry(template, env.shardtrain_home / "mlflow" / "mlflow.db")
    return env


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def api(prefect_harness):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        yield client
