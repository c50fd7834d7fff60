"""A managed service's kill and stop reach its workers, also those in a session of their own, as BentoML's process
manager (circus) starts them: left behind, an orphaned worker goes on serving the port of a service called dead."""

import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from supportflow.processes import ManagedProcess, descendants, gone

# A manager that starts one worker in a new session, as circus does (os.setsid), and waits; on SIGTERM it exits at
# once, leaving the worker to whoever stops it (a manager that dies mid-shutdown).
WORKER = "import time; time.sleep(600)"
MANAGER = f"""
import signal, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", {WORKER!r}], start_new_session=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(600)
"""


def _runs_the_worker(process: psutil.Process) -> bool:
    """The worker once it runs its own command: a child seen between fork and exec (the manager's command line still)
    has not left the manager's session yet."""
    try:
        return process.cmdline()[-1:] == [WORKER]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _started(tmp_path: Path) -> tuple[ManagedProcess, psutil.Process]:
    command = [sys.executable, "-c", MANAGER]
    service = ManagedProcess("manager", command, tmp_path, dict(os.environ), "http://127.0.0.1:9/", tmp_path / "log")
    service.launch()
    assert service.pid is not None
    deadline = time.monotonic() + 30
    while not (below := [p for p in descendants(service.pid) if _runs_the_worker(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(below) == 1, "the manager started no worker"
    worker = below[0]
    assert os.getsid(worker.pid) != os.getsid(service.pid)  # outside the group the service leads
    return service, worker


@pytest.fixture
def cleanup() -> list[psutil.Process]:
    """Whatever a failed assertion would leave running is killed at the end."""
    left: list[psutil.Process] = []
    yield left
    for process in left:
        if not gone(process):
            process.kill()


def test_a_killed_service_takes_its_workers_with_it(tmp_path: Path, cleanup: list[psutil.Process]) -> None:
    service, worker = _started(tmp_path)
    cleanup.append(worker)
    service.kill()
    assert service.process is not None and service.process.returncode is not None
    assert gone(worker)


def test_a_stopped_service_leaves_no_worker_its_manager_did_not_stop(tmp_path: Path, cleanup: list[psutil.Process]) -> None:
    service, worker = _started(tmp_path)
    cleanup.append(worker)
    service.stop()
    assert service.process is not None and service.process.returncode == 0  # it exited on SIGTERM, as asked
    assert gone(worker)
