"""Child processes that serve HTTP (BentoML services, Rasa, the action server): start, wait until
healthy, stop. Each runs in its own process group and logs to its own file."""

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

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def __enter__(self) -> "ManagedProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
