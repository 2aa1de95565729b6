"""The embedded default cluster: one long-lived local Ray head per ``$SHARDTRAIN_HOME``.

Starting Ray costs ~8 s; joining a running head costs well under a second. The first process
that needs Ray starts a head (``ray start --head``, detached, dashboard and job server on
127.0.0.1) and records it in ``$SHARDTRAIN_HOME/cluster/cluster.json``; later processes read
the record, check that the head is alive and join it. A file lock around check-or-start makes
processes that start at once share one head, and a dead head's record is replaced. A small
monitor process (``cluster_monitor``) stops the head after ``SHARDTRAIN_CLUSTER_IDLE_S``
seconds without running jobs or connected drivers.

The head outlives the process that starts it, and every job and worker on it inherits the
head's environment: it starts from an allowlist (``cluster_env.head_environment``: what Ray
and the frameworks need, plus ``SHARDTRAIN_CLUSTER_ENV_ALLOW``), never from the whole
environment of the task that happened to start it (its Airflow or Prefect secrets, its
``AIRFLOW_CTX_*``). Starting a head is logged (``shardtrain.runtime``, INFO) before and after,
with how long it took, and so is the detached head it leaves running: once when it starts,
and again when the process that started it exits while the head still runs.

Ray 2.60 turns token authentication on for the clusters it starts. The head runs with
``RAY_AUTH_MODE=token`` and a token of its own in ``cluster/auth_token`` (mode 0600; it never
appears in a record, message or log): drivers join with ``RAY_AUTH_TOKEN_PATH`` pointing at it
and job clients send it as a bearer header (``LocalCluster.job_client()``).

Example:
    >>> head = ensure()  # doctest: +SKIP
    >>> head.job_client().submit_job(entrypoint="python -c 'print(1)'")  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shardtrain import env
from shardtrain.errors import ClusterError, ConfigError
from shardtrain.home import shardtrain_home
from shardtrain.runtime import cluster_env, processes

RECORD = "cluster.json"
LOCK = "cluster.lock"
TOKEN = "auth_token"
LAST_USED = "last_used"  # touched by every process that joins: counts as activity
MONITOR_STATE = "monitor.json"  # the idle monitor's last look: drivers, jobs, last activity
START_LOG = "start.log"
MONITOR_LOG = "monitor.log"
#: Seconds a head gets to stop on SIGTERM before its process group is killed.
STOP_GRACE_S = processes.STOP_GRACE_S
#: Tries at starting a head when a port chosen free is taken before Ray binds it.
START_ATTEMPTS = 3
#: Ray's Unix socket paths (``<temp>/session_<time>_<pid>/sockets/plasma_store``) must stay
#: under 108 bytes; a longer home gets its Ray temp dir under /tmp, linked from the home.
_MAX_TEMP_DIR = 40

logger = logging.getLogger("shardtrain.runtime")


def cluster_dir() -> Path:
    """Where the local head keeps its record, lock, token and logs."""
    return shardtrain_home() / "cluster"


@dataclass(frozen=True)
class LocalCluster:
    """A running local head, as recorded in ``cluster.json``."""

    gcs_address: str  # host:port, what ``ray.init(address=...)`` takes
    dashboard_url: str  # http://127.0.0.1:port: dashboard, state API and job server
    head_pgid: int  # the process group of every head process (the ``ray start`` session)
    gcs_pid: int
    gcs_started: float  # the GCS process's start time: guards against a reused pid
    monitor_pid: int | None
    num_cpus: int
    idle_s: float
    temp_dir: str  # Ray's temp dir: session folders and logs
    cluster_dir: str
    started_at: float

    @property
    def token_path(self) -> Path:
        return Path(self.cluster_dir) / TOKEN

    def auth_headers(self) -> dict[str, str]:
        """HTTP headers the dashboard and job server accept (holds the token: never log)."""
        token = self.token_path.read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def driver_env(self) -> dict[str, str]:
        """Environment that lets a process join with a plain ``ray.init()`` (no secret in it:
        the token stays in its file)."""
        return {
            "RAY_ADDRESS": self.gcs_address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
        }

    def job_client(self):
        """A ``ray.job_submission.JobSubmissionClient`` for this head's job server."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url, headers=self.auth_headers())

    def is_alive(self) -> bool:
        """True while the recorded GCS process runs (a zombie or a reused pid is dead)."""
        return processes.process_matches(self.gcs_pid, self.gcs_started)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocalCluster:
        return cls(**data)


def current() -> LocalCluster | None:
    """The running head recorded under ``$SHARDTRAIN_HOME``; None when none runs."""
    record = _read_record()
    return record if record is not None and record.is_alive() else None


def ensure(*, num_cpus: int | None = None) -> LocalCluster:
    """The running local head, started when there is none (or its record is stale).

    Args:
        num_cpus: CPUs for a head started now (default ``SHARDTRAIN_CLUSTER_NUM_CPUS``, else
            the machine's); a running head keeps what it was started with.
    """
    with _locked():
        record = _read_record()
        if record is not None and record.is_alive():
            _touch()
            return record
        if record is not None:
            _kill(record)
            _forget()
        record = _start(num_cpus)
        _touch()
    logger.info("%s", left_running_message(record, exiting=False))
    atexit.register(_log_left_running, record, os.getpid())
    return record


def left_running_message(record: LocalCluster, *, exiting: bool) -> str:
    """The line that says a detached head runs on without the process that started it: how to
    stop it, and when it stops by itself."""
    home = Path(record.cluster_dir).parent
    if exiting:
        what = (
            f"This process (pid {os.getpid()}) exits and leaves the local Ray head it started "
            f"at {record.gcs_address} running detached"
        )
    else:
        what = (
            f"The local Ray head at {record.gcs_address} runs detached: it outlives this "
            f"process (pid {os.getpid()}), which started it"
        )
    return (
        f"{what}. It stops by itself after {record.idle_s:g} s without jobs or connected "
        f"drivers (SHARDTRAIN_CLUSTER_IDLE_S); `shardtrain cluster stop` "
        f"(SHARDTRAIN_HOME={home}) stops it now"
    )


def _log_left_running(record: LocalCluster, starter_pid: int) -> None:
    """At exit of the process that started the head: say that the head still runs. Nothing
    when it was stopped or replaced meanwhile, or in a forked child (it inherits the hook)."""
    if os.getpid() != starter_pid:
        return
    try:
        current = LocalCluster.from_dict(
            json.loads((Path(record.cluster_dir) / RECORD).read_text())
        )
    except (OSError, ValueError, TypeError):
        return
    if current.gcs_pid != record.gcs_pid or not current.is_alive():
        return
    logger.info("%s", left_running_message(record, exiting=True))


def join(record: LocalCluster, **init_options: Any) -> None:
    """Connect this process to the head as a driver (``ray.init`` options pass through)."""
    import ray

    _use_token(record)
    try:
        ray.init(address=record.gcs_address, configure_logging=False, **init_options)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise ClusterError(
            f"could not join the local Ray head at {record.gcs_address} ({exc}). Run "
            "`shardtrain cluster status`; `shardtrain cluster stop` clears a broken head and "
            "the next run starts a new one.",
            address=record.gcs_address,
        ) from exc


def stop() -> LocalCluster | None:
    """Stop the recorded head (its own processes only) and remove its record.

    Returns the record of the head that was stopped, None when there was none.
    """
    with _locked():
        record = _read_record()
        if record is None:
            return None
        _kill(record)
        _forget()
        return record


# -- the head's processes ---------------------------------------------------------------------


def _start(num_cpus: int | None) -> LocalCluster:
    folder = cluster_dir()
    folder.mkdir(parents=True, exist_ok=True)
    token_path = _ensure_token(folder)
    temp_dir = _temp_dir(folder)
    cpus = num_cpus if num_cpus is not None else env.CLUSTER_NUM_CPUS.get()
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    if not isinstance(cpus, int) or cpus < 1:
        raise ConfigError(
            f"the local Ray head needs a whole number of CPUs >= 1, got {cpus!r}; set "
            "num_cpus (or SHARDTRAIN_CLUSTER_NUM_CPUS) to at least 1.",
            num_cpus=cpus,
        )
    idle_s = float(env.CLUSTER_IDLE_S.get())
    if idle_s <= 0:
        raise ConfigError(
            f"SHARDTRAIN_CLUSTER_IDLE_S must be a number of seconds > 0, got {idle_s:g}.",
            variable="SHARDTRAIN_CLUSTER_IDLE_S",
        )
    head_env = _head_env(token_path)
    logger.info(
        "Starting a local Ray head (no RAY_ADDRESS and none running under %s); this takes ~10 s",
        folder.parent,
    )
    begun = time.monotonic()
    for _attempt in range(START_ATTEMPTS):
        started_at = time.time()
        launched = _launch(folder, temp_dir, cpus, head_env)
        if launched is not None:
            break
        # A port chosen free was taken before Ray bound it (other Rays start here too).
    else:
        raise ClusterError(
            f"could not start the local Ray head: {START_ATTEMPTS} tries found their ports "
            f"taken; its log is {folder / START_LOG}.",
            log=str(folder / START_LOG),
        )
    pgid, gcs, address, dashboard_port = launched
    record = LocalCluster(
        gcs_address=address,
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        head_pgid=pgid,
        gcs_pid=gcs.pid,
        gcs_started=gcs.create_time(),
        monitor_pid=None,
        num_cpus=cpus,
        idle_s=idle_s,
        temp_dir=temp_dir,
        cluster_dir=str(folder),
        started_at=started_at,
    )
    monitor = _start_monitor(record, head_env)
    record = LocalCluster(**{**record.to_dict(), "monitor_pid": monitor})
    _write_record(record)
    logger.info(
        "Started the local Ray head at %s in %.1f s (dashboard %s, %d CPUs)",
        record.gcs_address,
        time.monotonic() - begun,
        record.dashboard_url,
        cpus,
    )
    return record


def _launch(folder: Path, temp_dir: str, cpus: int, head_env: dict[str, str]):
    """Run ``ray start --head`` once: (pgid, gcs process, GCS address, dashboard port), or
    None when a port was taken meanwhile; ClusterError on any other failure."""
    gcs_port, dashboard_port, client_port, agent_port = processes.free_ports(4)
    command = [
        sys.executable,
        "-c",
        "from ray.scripts.scripts import main; main()",
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={client_port}",
        f"--dashboard-agent-listen-port={agent_port}",
        f"--num-cpus={cpus}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    address_file = Path(temp_dir) / "ray_current_cluster"
    address_file.unlink(missing_ok=True)  # a previous head's address must not be read back
    timeout = float(env.CLUSTER_START_TIMEOUT_S.get())
    started_at = time.time()
    log_path = folder / START_LOG
    with open(log_path, "ab") as log:
        offset = log.tell()
        process = subprocess.Popen(
            command,
            env=head_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop kills exactly this head
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
    pgid = process.pid
    gcs = processes.group_process(pgid, "gcs_server", started_at)
    if code == 0 and gcs is not None and address_file.exists():
        return pgid, gcs, address_file.read_text().strip(), dashboard_port
    processes.kill_group(pgid, started_at)
    with open(log_path, "rb") as log:
        log.seek(offset)
        output = log.read().decode(errors="replace").lower()
    if "already occupied" in output or "address already in use" in output:
        return None
    reason = f"exit code {code}" if code is not None else f"no answer after {timeout:.0f} s"
    raise ClusterError(
        f"could not start the local Ray head ({reason}); its log is {log_path}. Set "
        "SHARDTRAIN_CLUSTER=private to start a Ray inside the process instead, or RAY_ADDRESS "
        "to use another cluster.",
        log=str(log_path),
    )


def _start_monitor(record: LocalCluster, head_env: dict[str, str]) -> int:
    folder = Path(record.cluster_dir)
    package_root = str(Path(__file__).resolve().parents[2])  # importable without install
    path = os.pathsep.join(p for p in (package_root, head_env.get("PYTHONPATH")) if p)
    with open(folder / MONITOR_LOG, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-u",
                "-m",
                "shardtrain.runtime.cluster_monitor",
                json.dumps(record.to_dict()),  # no secret in it: the token stays in its file
            ],
            env={**head_env, "PYTHONPATH": path},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process.pid


def _head_env(token_path: Path) -> dict[str, str]:
    """The head's (and its monitor's) environment: the allowlist of ``cluster_env``, not this
    process's whole environment (the head and its jobs outlive this process), plus the token
    settings and this interpreter's scripts first on PATH."""
    head_env = cluster_env.head_environment(os.environ, env.CLUSTER_ENV_ALLOW.get())
    head_env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    # Job entrypoints say `python`: make it this interpreter (and its environment's scripts).
    bin_dir = str(Path(sys.executable).parent)
    head_env["PATH"] = os.pathsep.join(p for p in (bin_dir, head_env.get("PATH")) if p)
    return head_env


def _kill(record: LocalCluster) -> None:
    """Stop the monitor and every process of the head's group (never another Ray)."""
    monitor = record.monitor_pid
    if monitor and monitor != os.getpid() and processes.is_monitor(monitor):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(monitor, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while processes.is_monitor(monitor) and time.monotonic() < deadline:
            time.sleep(0.05)
    processes.kill_group(record.head_pgid, record.started_at)


# -- files under cluster/ ---------------------------------------------------------------------


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Hold the cluster lock: one process at a time checks, starts or stops the head."""
    folder = cluster_dir()
    folder.mkdir(parents=True, exist_ok=True)
    timeout = float(env.CLUSTER_START_TIMEOUT_S.get()) + 30
    with open(folder / LOCK, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"another process has held {folder / LOCK} for over {timeout:.0f} s "
                        "while starting or stopping the local Ray head; check "
                        f"{folder / START_LOG}, or run `shardtrain cluster stop`.",
                        lock=str(folder / LOCK),
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_record() -> LocalCluster | None:
    try:
        return LocalCluster.from_dict(json.loads((cluster_dir() / RECORD).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return None  # a torn or foreign file: treated as no head, replaced on the next start


def _write_record(record: LocalCluster) -> None:
    path = cluster_dir() / RECORD
    tmp = path.with_name(f".{RECORD}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record.to_dict(), indent=2))
    os.replace(tmp, path)


def _forget() -> None:
    for name in (RECORD, MONITOR_STATE):
        with contextlib.suppress(FileNotFoundError):
            (cluster_dir() / name).unlink()


def _touch() -> None:
    (cluster_dir() / LAST_USED).touch()


def last_used(folder: Path | None = None) -> float:
    """When a process last joined (epoch seconds; 0 when never)."""
    try:
        return ((folder or cluster_dir()) / LAST_USED).stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _ensure_token(folder: Path) -> Path:
    path = folder / TOKEN
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path


def _temp_dir(folder: Path) -> str:
    """``cluster/ray`` when short enough for Ray's socket paths, else a /tmp folder named
    after the home (``cluster/ray`` then links to it, so the logs are found from the home)."""
    preferred = folder / "ray"
    if len(str(preferred)) <= _MAX_TEMP_DIR:
        preferred.mkdir(exist_ok=True)
        return str(preferred)
    digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    short = Path("/tmp") / f"shardtrain-{os.getuid()}-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    if not preferred.is_symlink() and not preferred.exists():
        preferred.symlink_to(short)
    return str(short)


def _use_token(record: LocalCluster) -> None:
    """Point this process's Ray at the head's token (Ray reads these when it connects)."""
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(record.token_path)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    try:  # Ray caches its config and token at first use; refresh both
        # not in ray/_raylet.pyi, present at runtime (the except covers a Ray without them)
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass
