"""Processes of the local Ray head, found and stopped by process group and start time, so a
reused pid or another user's Ray is never touched."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

#: Seconds a process group gets to exit after SIGTERM, and again after SIGKILL.
STOP_GRACE_S = 3.0


def kill_group(pgid: int, started_at: float) -> None:
    """SIGTERM, then SIGKILL, the process group, if its processes are the ones we started."""
    import psutil

    def members() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["pid", "create_time", "status"]):
            try:
                if (
                    os.getpgid(proc.pid) == pgid
                    and proc.info["status"] != psutil.STATUS_ZOMBIE
                    and proc.info["create_time"] >= started_at - 5
                ):
                    found.append(proc)
            except (ProcessLookupError, psutil.Error, OSError):
                continue
        return found

    if not members():
        return
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not members():
                return
            time.sleep(0.1)


def group_process(pgid: int, name: str, started_at: float):
    import psutil

    for proc in psutil.process_iter(["pid", "name", "create_time"]):
        try:
            if (
                proc.info["name"] == name
                and os.getpgid(proc.pid) == pgid
                and proc.info["create_time"] >= started_at - 5
            ):
                return proc
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return None


def process_matches(pid: int, started: float) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def is_monitor(pid: int) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and any(
            "cluster_monitor" in part for part in proc.cmdline()
        )
    except psutil.Error:
        return False


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
