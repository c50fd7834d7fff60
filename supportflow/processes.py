"""Child processes that serve HTTP (BentoML services, Rasa, the action server): start, wait until
healthy, stop. Each runs in its own process group and logs to its own file.

A group is not the whole service: BentoML's process manager (circus) starts each worker in a session of its own
(`os.setsid`), outside the group. A SIGKILL sent to the group alone takes the arbiter and leaves its workers serving
its port, orphaned. So a kill reaches every process below the service, found before the signal (afterwards an
orphan hangs from the init process, found from nowhere)."""

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from supportflow.errors import SupportflowError


def free_port() -> int:
    """A port nothing listens on now, for a service started next (smoke tests, test servers)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def signal_group(pid: int, signum: int = signal.SIGTERM) -> bool:
    """Signal a recorded service's whole process group (a service started with ManagedProcess leads its own,
    so its workers go too); returns whether the group still existed."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return False
    return True


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below `pid` now, whatever its group or session."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_tree(pid: int, below: list[psutil.Process] | None = None) -> None:
    """SIGKILL a service's group and every process below it (`below`, found before if the service may be gone by
    now): as a pod's end takes every process in it. psutil checks each is still the process it found, not a reuse
    of its pid."""
    below = descendants(pid) if below is None else below
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _kill(below)


def _kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def gone(process: psutil.Process) -> bool:
    """Ended: no longer running, or a zombie its parent (or the init process, for an orphan) has yet to reap."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _await_gone(processes: list[psutil.Process], seconds: float = 30) -> None:
    """A SIGKILL is delivered, not done: the processes end a moment later."""
    deadline = time.monotonic() + seconds
    while not all(gone(process) for process in processes) and time.monotonic() < deadline:
        time.sleep(0.05)


class ServiceStartError(SupportflowError):
    """A service exited or did not become healthy in time; the message names its log."""


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when the process that started it dies, even by SIGKILL."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1


class ManagedProcess:
    """`die_with_parent`: for services that must not outlive their caller (a smoke test killed mid-way);
    a stack left serving in the background must not set it."""

    def __init__(
        self, name: str, command: list[str], cwd: Path, env: dict[str, str], health_url: str, log_path: Path, die_with_parent: bool = False
    ) -> None:
        self.name, self.command, self.cwd, self.env, self.health_url, self.log_path = name, command, cwd, env, health_url, log_path
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None
        self._workers: list[psutil.Process] = []  # below the service when last looked: see `note_workers`

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def launch(self) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent and sys.platform == "linux" else None,
            )
        return self

    def wait_healthy(self, timeout: float = 180) -> "ManagedProcess":
        if self.process is None:
            self.launch()
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceStartError(f"{self.name} exited with status {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.health_url, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServiceStartError(f"{self.name} did not answer at {self.health_url} within {timeout:.0f} s; see {self.log_path}")

    def start(self, timeout: float = 180) -> "ManagedProcess":
        return self.launch().wait_healthy(timeout)

    def exit_status(self) -> int | None:
        """How a started service ended (a negative status: the signal that killed it); None while it runs."""
        return None if self.process is None else self.process.poll()

    def note_workers(self) -> None:
        """Remember the processes below the running service. Should it die by SIGKILL, its workers, orphaned, keep
        serving its port, and only a list taken while it ran still finds them."""
        if self.exit_status() is None and self.process is not None:
            self._workers = descendants(self.process.pid)

    def restart(self, timeout: float = 180) -> "ManagedProcess":
        """Start a service that has ended again, once the workers it left are gone: they hold its port."""
        _kill(self._workers)
        _await_gone(self._workers)
        self._workers = []
        return self.start(timeout)

    def stop(self) -> None:
        """SIGTERM to the group, which the service's own manager passes on to its workers (one signal each: a second
        one makes uvicorn skip its shutdown hooks); then whatever is left, the service or a worker, is killed."""
        if self.process is None or self.process.poll() is not None:
            return
        below = descendants(self.process.pid)
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            kill_tree(self.process.pid, below)
            self.process.wait(timeout=30)
        _, left = psutil.wait_procs(below, timeout=10)
        _kill(left)  # workers their manager did not stop (the group's leader is reaped: no group to signal)
        _await_gone(left)

    def kill(self) -> None:
        """SIGKILL to the service and every worker under it: nothing is flushed or closed (a crash, an OOM kill)."""
        if self.process is None:
            return
        below = descendants(self.process.pid)
        kill_tree(self.process.pid, below)
        self.process.wait(timeout=30)
        _await_gone(below)

    def __enter__(self) -> "ManagedProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
