"""A multi-host rig on one machine: Linux network namespaces on a bridge, one "host" each.

Hosts (each its own namespace and address in 198.18.0.0/15, the benchmarking range; the
bridge has no address, so no traffic leaves the rig's own namespaces):

- ``head`` (198.18.29.10): the Ray head, 0 CPUs for training, job server on port 8265;
- ``w1``, ``w2`` (.11, .12): Ray worker nodes, 1 logical CPU each, their own
  ``--node-ip-address`` and temp dir;
- ``s3`` (.20): moto's S3 server on port 9000, the shared stage and data store;
- ``orch`` (.30): the orchestrator side (plain scripts, which submit Ray Jobs through the job
  server URL and the cluster's token).

Ray 2.60 runs with token auth (``RAY_AUTH_MODE=token``): the rig writes its own token and
gives every Ray node and driver ``RAY_AUTH_TOKEN_PATH``; the orchestrator sends it as a
bearer header to the job server. The S3 credentials (dummies) and endpoint reach the Ray
nodes through their environment, as a cluster's own configuration would, never through a
job's runtime_env.

Faults are verbs: ``kill(host)`` (every process in the host's namespace, by pid),
``supervise(host)`` (restart its raylet when it exits, as KubeRay or systemd would),
``cut(host, seconds)`` (its link down, then up), ``cap(mbit)`` (``tc tbf`` on every link).

Everything the rig starts is named ``strig-<run id>-...`` (namespaces) or ``strig<run id>...``
(links) and recorded in ``/tmp/shardtrain-rig/<run id>.json`` with the pid of the process that
owns it. ``Rig.close`` removes it all (processes by pid, namespaces, links, files); a new rig
first removes what a previous run left whose owner is gone. Nothing else is touched: no
``ray stop``, no process outside the rig's namespaces. ``why_not()`` says why a rig cannot be
made here (not root, no ``ip``, no namespaces); the tests skip with that reason.

Example (as root)::

    with Rig() as rig:
        rig.start()
        print(rig.python("orch", "-c", "print('hello from the orchestrator host')"))
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

PREFIX = "strig"
SUBNET = "198.18.29"  # inside 198.18.0.0/15
STATE_ROOT = Path("/tmp/shardtrain-rig")
REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
VENV_BIN = str(Path(sys.executable).parent)

HEAD_PORT = 6379
DASHBOARD_PORT = 8265
S3_PORT = 9000
OBJECT_STORE_BYTES = 100 * 1024 * 1024
#: Dummy S3 credentials of the rig's moto server (not secrets; never real ones).
S3_KEY = "AKIARIGTESTKEY000000"
S3_SECRET = "rig-s3-secret-not-real"
BUCKET = "rig"

#: name -> last octet of its address
HOSTS = {"head": 10, "w1": 11, "w2": 12, "s3": 20, "orch": 30}
WORKERS = ("w1", "w2")

#: Ray's node health checks as the rig runs them by default: Ray's own defaults (a vanished
#: node is declared dead after ``period x threshold``, ~15 s plus the timeout) unless a rig is
#: made with ``fast_failure_detection=True`` (1 s x 3), which the suite uses to stay in budget.
FAST_HEALTH_CHECK = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


class RigError(RuntimeError):
    """The rig could not do what it was asked; the message says what and shows the output."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RigError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def why_not() -> str | None:
    """Why a rig cannot be made on this machine (None: it can)."""
    if sys.platform != "linux":
        return "the rig needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the rig needs root to create network namespaces (CI runs it as root)"
    if shutil.which("ip") is None:
        return "the rig needs iproute2's `ip` command"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"cannot create a network namespace here: {made.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    link: str  # the root side of its veth, on the bridge


def _ns_pids(ns: str) -> list[int]:
    done = _ip("netns", "pids", ns, check=False)
    return [int(x) for x in done.stdout.split()] if done.returncode == 0 else []


def _kill_ns(ns: str, wait_s: float = 5.0) -> list[int]:
    """SIGKILL every process in namespace ``ns`` (by pid, found through the namespace)."""
    killed: list[int] = []
    deadline = time.monotonic() + wait_s
    while True:
        pids = [p for p in _ns_pids(ns) if p != os.getpid()]
        if not pids or time.monotonic() > deadline:
            return killed
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _links() -> list[str]:
    done = _ip("-o", "link", "show", check=False)
    names = []
    for line in done.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) > 1:
            names.append(parts[1].strip().split("@")[0])
    return names


def _remove_run(run_id: str) -> None:
    """Remove one run's namespaces (their processes first), links, state and files."""
    for ns in _ip("netns", "list", check=False).stdout.split("\n"):
        name = ns.split(" ")[0]
        if name.startswith(f"{PREFIX}-{run_id}-"):
            _kill_ns(name)
            _ip("netns", "del", name, check=False)
    for link in _links():
        if link.startswith(f"{PREFIX}{run_id}"):
            _ip("link", "del", link, check=False)
    shutil.rmtree(STATE_ROOT / run_id, ignore_errors=True)
    (STATE_ROOT / f"{run_id}.json").unlink(missing_ok=True)


def clean_leftovers() -> list[str]:
    """Remove what earlier rigs left (their owner process is gone); returns their run ids.
    Only names with the rig's prefix are looked at; a live rig's are kept."""
    run_ids: set[str] = set()
    for ns in _ip("netns", "list", check=False).stdout.split("\n"):
        name = ns.split(" ")[0]
        if name.startswith(f"{PREFIX}-probe-"):  # why_not's, left by a process now gone
            if not psutil.pid_exists(int(name.rsplit("-", 1)[1])):
                _ip("netns", "del", name, check=False)
        elif name.startswith(f"{PREFIX}-"):
            run_ids.add(name.split("-")[1])
    for link in _links():
        if link.startswith(PREFIX) and len(link) >= len(PREFIX) + 4:
            run_ids.add(link[len(PREFIX) : len(PREFIX) + 4])
    if STATE_ROOT.exists():
        run_ids.update(p.stem for p in STATE_ROOT.glob("*.json"))
    removed = []
    for run_id in sorted(run_ids):
        state = STATE_ROOT / f"{run_id}.json"
        try:
            owner = json.loads(state.read_text())["owner"]
        except (OSError, ValueError, KeyError):
            owner = None
        if owner is not None and owner != os.getpid() and psutil.pid_exists(owner):
            continue  # another live rig's
        _remove_run(run_id)
        removed.append(run_id)
    return removed


class Rig:
    """Network namespaces on a bridge, a Ray cluster across them, moto's S3 on its own host.

    Args:
        fast_failure_detection: run Ray's node health checks at 1 s x 3 instead of Ray's
            defaults (the suite's choice, to stay inside its time budget).
        code: a folder put before the repository on every rig process's ``PYTHONPATH``
            (e.g. an older ``core/src`` exported by ``git archive``, to compare behaviours).
    """

    def __init__(self, *, fast_failure_detection: bool = False, code: str | None = None) -> None:
        self.run_id = secrets.token_hex(2)
        self.dir = STATE_ROOT / self.run_id
        self.bridge = f"{PREFIX}{self.run_id}br"
        self.hosts = {
            name: Host(
                name,
                f"{PREFIX}-{self.run_id}-{name}",
                f"{SUBNET}.{octet}",
                f"{PREFIX}{self.run_id}{name}",
            )
            for name, octet in HOSTS.items()
        }
        self.fast_failure_detection = fast_failure_detection
        self.pythonpath = f"{code}:{REPO}" if code else str(REPO)
        self._supervisors: dict[str, threading.Event] = {}
        self._timers: list[threading.Thread] = []
        self._spawned: list[subprocess.Popen] = []
        self._restore_sigterm = False
        self.events: list[tuple[float, str]] = []  # (time.time(), what happened)
        self.closed = False

    # -- addresses ----------------------------------------------------------------------------

    @property
    def gcs_address(self) -> str:
        return f"{self.hosts['head'].ip}:{HEAD_PORT}"

    @property
    def job_server(self) -> str:
        return f"http://{self.hosts['head'].ip}:{DASHBOARD_PORT}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.hosts['s3'].ip}:{S3_PORT}"

    @property
    def token_path(self) -> Path:
        return self.dir / "auth_token"

    def storage_options(self) -> dict:
        return {
            "key": S3_KEY,
            "secret": S3_SECRET,
            "client_kwargs": {"endpoint_url": self.s3_endpoint, "region_name": "us-east-1"},
        }

    # -- building ------------------------------------------------------------------------------

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _record(self) -> None:
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        state = {
            "owner": os.getpid(),
            "namespaces": [h.ns for h in self.hosts.values()],
            "links": [self.bridge, *(h.link for h in self.hosts.values())],
            "dir": str(self.dir),
        }
        (STATE_ROOT / f"{self.run_id}.json").write_text(json.dumps(state))

    def build_network(self) -> None:
        """The bridge and a namespace per host, each with its veth and address."""
        self._record()  # first: an interrupted build is still found and removed
        atexit.register(self.close)  # an interrupted run still removes what it made
        self._catch_sigterm()
        self.dir.mkdir(parents=True, exist_ok=True)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")
        for host in self.hosts.values():
            _ip("netns", "add", host.ns)
            _ip("-n", host.ns, "link", "set", "lo", "up")
            _ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
            _ip("link", "set", host.link, "master", self.bridge)
            _ip("link", "set", host.link, "up")
            _ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.ns, "link", "set", "eth0", "up")
        self.event("network up")

    def start(self) -> Rig:
        """Network, S3 server, Ray head, both worker nodes; returns when all answer."""
        clean_leftovers()
        self.build_network()
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        errors: list[BaseException] = []
        s3 = threading.Thread(target=self._start_s3_noting, args=(errors,))
        s3.start()  # beside the head: they do not need each other
        self.start_head()
        s3.join()

        def start(name: str) -> None:
            try:
                self.start_worker(name)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(name,)) for name in WORKERS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        self.wait_for_nodes(len(WORKERS) + 1)
        self.event("cluster up")
        return self

    def _catch_sigterm(self) -> None:
        """A SIGTERM (a CI runner stopping the job) ends Python without ``atexit``: while the
        rig runs, it raises ``KeyboardInterrupt`` instead, so fixtures tear down and ``close``
        runs. Only where nobody else handles SIGTERM, and only from the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def interrupt(signum, frame):
            raise KeyboardInterrupt("SIGTERM: the rig is being removed")

        signal.signal(signal.SIGTERM, interrupt)
        self._restore_sigterm = True

    def env(self, host: str) -> dict[str, str]:
        """The environment of the rig's processes on ``host``: chosen, not inherited."""
        env = {
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.dir / host / "home"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": self.pythonpath,
            "SHARDTRAIN_HOME": str(self.dir / host / "shardtrain"),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_COLOR_PREFIX": "0",
            # The cluster's own S3 configuration (as an instance profile would be).
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        if self.fast_failure_detection:
            env.update(FAST_HEALTH_CHECK)
        home = self.dir / host / "home"
        if not home.exists():
            home.mkdir(parents=True)
            # matplotlib's font list (a publish draws training curves): built once per
            # machine, seconds on a loaded one; copied, not shared, so nothing outside the
            # rig's folder is written
            fonts = Path.home() / ".cache" / "matplotlib"
            if fonts.is_dir():
                shutil.copytree(fonts, home / ".cache" / "matplotlib")
        return env

    def run(
        self,
        host: str,
        argv: list[str],
        *,
        timeout: float = 120,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """``argv`` in ``host``'s namespace, to its end."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.hosts[host].ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env or self.env(host),
            cwd=REPO,
        )
        if check and done.returncode != 0:
            raise RigError(
                f"{' '.join(argv[:4])}... on {host} exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def spawn(self, host: str, argv: list[str], log: str) -> subprocess.Popen:
        """``argv`` in ``host``'s namespace, in the background (output to ``log`` in the rig's
        folder); ended with the namespace."""
        out = open(self.dir / log, "ab")  # noqa: SIM115 - the child holds it
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.hosts[host].ns, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env(host),
            cwd=REPO,
            start_new_session=True,
        )
        out.close()
        self._spawned.append(proc)
        return proc

    def python(self, host: str, *args: str, timeout: float = 300) -> str:
        """``python *args`` on ``host``; its stdout."""
        return self.run(host, [PYTHON, *args], timeout=timeout).stdout

    def _start_s3_noting(self, errors: list[BaseException]) -> None:
        try:
            self.start_s3()
        except BaseException as exc:  # reported by start
            errors.append(exc)

    def start_s3(self) -> None:
        ip = self.hosts["s3"].ip
        self.spawn("s3", [PYTHON, "-m", "moto.server", "-H", ip, "-p", str(S3_PORT)], "s3.log")
        self._wait_http("orch", f"{self.s3_endpoint}/", "the S3 server")
        script = f"import boto3; boto3.client('s3').create_bucket(Bucket={BUCKET!r})"
        self.python("orch", "-c", script, timeout=60)
        self.event("s3 up")

    def _ray_start(self, host: str, extra: list[str]) -> None:
        temp = self.dir / host / "ray"
        temp.mkdir(parents=True, exist_ok=True)
        argv = [
            f"{VENV_BIN}/ray",
            "start",
            f"--node-ip-address={self.hosts[host].ip}",
            f"--temp-dir={temp}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
            *extra,
        ]
        self.run(host, argv, timeout=120)

    def start_head(self) -> None:
        self._ray_start(
            "head",
            [
                "--head",
                f"--port={HEAD_PORT}",
                "--num-cpus=0",
                "--include-dashboard=true",
                f"--dashboard-host={self.hosts['head'].ip}",
                f"--dashboard-port={DASHBOARD_PORT}",
            ],
        )
        self.event("head up")

    def start_worker(self, host: str, tries: int = 2) -> None:
        """A Ray worker node on ``host`` (again, after ``kill``: a new raylet, same address).
        ``ray start`` gives up after 30 s without an answer from the GCS (a loaded machine):
        what it left is killed and it is tried again, ``tries`` times in all."""
        for attempt in range(1, tries + 1):
            try:
                self._ray_start(host, [f"--address={self.gcs_address}", "--num-cpus=1"])
            except RigError:
                if attempt == tries:
                    raise
                self.event(f"{host} raylet start failed: trying again")
                _kill_ns(self.hosts[host].ns)
                continue
            self.event(f"{host} raylet started")
            return

    def _wait_http(self, host: str, url: str, what: str, timeout: float = 60) -> None:
        script = (
            "import sys, time, urllib.request, urllib.error\n"
            "deadline = time.time() + float(sys.argv[2])\n"
            "while True:\n"
            "    try:\n"
            "        urllib.request.urlopen(sys.argv[1], timeout=2); break\n"
            "    except urllib.error.HTTPError: break\n"
            "    except Exception:\n"
            "        if time.time() > deadline: raise\n"
            "        time.sleep(0.2)\n"
        )
        try:
            self.python(host, "-c", script, url, str(timeout), timeout=timeout + 10)
        except RigError as exc:
            raise RigError(f"{what} did not answer at {url}: {exc}") from exc

    def nodes(self) -> list[dict]:
        """The cluster's nodes as the job server's state API lists them (from ``orch``)."""
        out = self.python("orch", "-m", "tests.rig", "nodes", self.job_server, str(self.token_path))
        return json.loads(out)

    def wait_for_nodes(self, alive: int, timeout: float = 90) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                nodes = self.nodes()
            except RigError:
                nodes = []
            if sum(n["state"] == "ALIVE" for n in nodes) >= alive:
                return nodes
            if time.monotonic() > deadline:
                raise RigError(f"{alive} alive Ray nodes expected within {timeout} s: {nodes}")
            time.sleep(0.5)

    # -- faults --------------------------------------------------------------------------------

    def event(self, what: str) -> None:
        self.events.append((time.time(), what))

    def kill(self, host: str) -> list[int]:
        """SIGKILL every process on ``host`` (its namespace's pids): the host died."""
        killed = _kill_ns(self.hosts[host].ns)
        self.event(f"{host} killed ({len(killed)} processes)")
        return killed

    def raylet_alive(self, host: str) -> bool:
        for pid in _ns_pids(self.hosts[host].ns):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"raylet" in cmd.split(b"\0")[0]:
                return True
        return False

    def supervise(self, host: str, restart_after_s: float = 0.0) -> None:
        """Restart ``host``'s raylet when it exits (``restart_after_s`` later), as KubeRay or
        systemd would, until ``unsupervise`` or ``close``."""
        stop = threading.Event()
        self._supervisors[host] = stop

        def watch() -> None:
            while not stop.wait(0.5):
                if self.raylet_alive(host):
                    continue
                self.event(f"{host} raylet gone: supervisor restarts it")
                if stop.wait(restart_after_s):
                    return
                _kill_ns(self.hosts[host].ns)  # what is left of the old node
                try:
                    self.start_worker(host)
                except Exception as exc:  # try again on the next tick
                    self.event(f"{host} restart failed: {exc}")

        thread = threading.Thread(target=watch, name=f"rig-supervise-{host}", daemon=True)
        thread.start()

    def unsupervise(self, host: str) -> None:
        stop = self._supervisors.pop(host, None)
        if stop is not None:
            stop.set()

    def cut(self, host: str, seconds: float, *, wait: bool = False) -> None:
        """Take ``host``'s link down for ``seconds`` (the host lives on), then up again."""
        link = self.hosts[host].link
        _ip("link", "set", link, "down")
        self.event(f"{host} link cut")

        def restore() -> None:
            time.sleep(seconds)
            if not self.closed:
                _ip("link", "set", link, "up", check=False)
                self.event(f"{host} link back")

        if wait:
            restore()
        else:
            thread = threading.Thread(target=restore, name=f"rig-cut-{host}", daemon=True)
            thread.start()
            self._timers.append(thread)

    def cap(self, mbit: float, hosts: tuple[str, ...] | None = None) -> None:
        """Cap every link (or ``hosts``') at ``mbit`` Mbit/s each way (``tc tbf``)."""
        rate = f"{mbit}mbit"
        for name in hosts or tuple(self.hosts):
            host = self.hosts[name]
            tbf = ["tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"]
            subprocess.run(["tc", "qdisc", "replace", "dev", host.link, "root", *tbf], check=True)
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    host.ns,
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    "eth0",
                    "root",
                    *tbf,
                ],
                check=True,
            )
        self.event(f"links capped at {rate}")

    def uncap(self) -> None:
        for host in self.hosts.values():
            subprocess.run(["tc", "qdisc", "del", "dev", host.link, "root"], capture_output=True)
            subprocess.run(
                ["ip", "netns", "exec", host.ns, "tc", "qdisc", "del", "dev", "eth0", "root"],
                capture_output=True,
            )

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything: supervisors, processes (by pid), namespaces, links, files."""
        if self.closed:
            return
        self.closed = True
        if self._restore_sigterm and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for stop in self._supervisors.values():
            stop.set()
        self._supervisors.clear()
        _remove_run(self.run_id)
        for proc in self._spawned:  # killed with their namespace: collect their exit status
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def log(self, name: str) -> str:
        path = self.dir / name
        return path.read_text(errors="replace") if path.exists() else ""


# -- run on a rig host: ``python -m tests.rig nodes URL TOKEN_PATH`` ------------------------------


def _nodes(url: str, token_path: str) -> list[dict]:
    import urllib.request

    token = Path(token_path).read_text().strip()
    request = urllib.request.Request(
        f"{url}/api/v0/nodes?limit=100&detail=false",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        body = json.loads(reply.read())
    rows = body["data"]["result"]["result"]
    return [{"id": r["node_id"], "ip": r["node_ip"], "state": r["state"]} for r in rows]


if __name__ == "__main__":
    if sys.argv[1] == "nodes":
        print(json.dumps(_nodes(sys.argv[2], sys.argv[3])))
