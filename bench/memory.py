"""Peak memory of a case: resident memory summed over the driver and every Ray worker.

A thread samples every 100 ms. Processes are this driver and its descendants (``ray.init``
starts the raylet, and Ray's workers are the raylet's children; ``mp.spawn``'s ranks are
the driver's). Workers are every descendant but Ray's daemons (GCS, raylet, dashboard and
runtime-env agents, log monitor), which only the whole-tree figure includes. RSS, not PSS: reading PSS for a dozen processes takes ~27 ms
here, too slow to sample; RSS counts shared pages (libraries, Ray's object store) once per
process that maps them, so sums over many processes overstate, which the report says.
``peak_anon`` sums anonymous RSS instead (``RssAnon``: the heap and buffers each process
allocated itself; libraries and Ray's shared object store left out), which a sum over several
processes does not overstate: the memory a layout of several processes adds, beside plain's.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psutil

_DAEMON_BINARIES = ("gcs_server", "raylet")
_DAEMON_TITLES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
_DAEMON_SCRIPTS = ("log_monitor.py", "monitor.py", "dashboard.py", "agent.py")


def _is_daemon(process: psutil.Process) -> bool:
    """Ray's own services, as opposed to the driver's workers (Ray's or multiprocessing's)."""
    try:
        command = process.cmdline() or [""]
    except psutil.Error:
        return False
    if command[0].startswith(_DAEMON_TITLES) or command[0].endswith(_DAEMON_BINARIES):
        return True
    return any(part.endswith(_DAEMON_SCRIPTS) for part in command[1:3])


def _anon_bytes(pid: int) -> int:
    """``RssAnon`` of a process (/proc: a read of a few hundred bytes; 0 where unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _title(process: psutil.Process) -> str:
    """``ray::IDLE`` or ``ray::_TrainWorker.run`` as Ray titles it; else the program or script."""
    try:
        command = process.cmdline() or [process.name()]
    except psutil.Error:
        return "?"
    if command[0].startswith("ray::"):
        return command[0].split()[0]
    scripts = [part for part in command[1:3] if part.endswith(".py")]
    return Path(scripts[0] if scripts else command[0]).name


class PeakMemory:
    """Context manager: ``peak`` (driver + workers) and ``peak_tree`` (all), in bytes."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self.peak_tree = 0
        self.peak_anon = 0
        self.idle = 0
        self._driver = psutil.Process()
        self._daemons: dict[int, bool] = {}
        #: Peak RSS of each process seen, by a readable title ("driver", "ray::IDLE 1234").
        self.by_process: dict[str, int] = {}
        self._stop = threading.Event()
        self.failed_samples = 0

    def _note(self, title: str, rss: int) -> None:
        self.by_process[title] = max(self.by_process.get(title, 0), rss)

    def sample(self) -> tuple[int, int]:
        driver = self._driver.memory_info().rss
        self._note("driver", driver)
        workers = tree = 0
        anon = _anon_bytes(self._driver.pid)
        children = self._driver.children(recursive=True)
        for child in children:
            try:
                rss = child.memory_info().rss
                if child.pid not in self._daemons:
                    self._daemons[child.pid] = _is_daemon(child)
                self._note(f"{_title(child)} {child.pid}", rss)
            except Exception:  # noqa: BLE001 - gone, a zombie, or unreadable: skip this one
                continue
            tree += rss
            if not self._daemons[child.pid]:
                workers += rss
                anon += _anon_bytes(child.pid)
        self.peak_anon = max(self.peak_anon, anon)
        return driver + workers, driver + tree

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                used, tree = self.sample()
            except Exception:  # noqa: BLE001 - e.g. a process vanished mid-scan; never die silently
                self.failed_samples += 1
                continue
            self.peak = max(self.peak, used)
            self.peak_tree = max(self.peak_tree, tree)

    def __enter__(self) -> PeakMemory:
        self.idle, tree = self.sample()
        self.peak, self.peak_tree = self.idle, tree
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        used, tree = self.sample()
        self.peak = max(self.peak, used)
        self.peak_tree = max(self.peak_tree, tree)
