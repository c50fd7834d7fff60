"""Real PostgreSQL and Redis servers for the tests of the stores that run on them at scale (Debian's packages:
`make system-deps` installs them). Each is a context manager (the soak benchmark starts them too) and a session
fixture: started on a free loopback port in a temporary folder, the way the moto S3 server is
(tests/conftest.py), and stopped at the end. A test asks `postgres` for a
fresh database of its own (`postgres.new_database()`), so tests never see each other's rows.

PostgreSQL refuses to run as root: when the tests do (as on the project's machines), its processes run as the
`postgres` user the Debian package creates, in a folder that user owns.
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from supportflow.processes import free_port

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
POSTGRES_USER = "postgres"  # the server's superuser, as initdb names it after the user it runs as


def wait_for_port(port: int, process: subprocess.Popen[bytes], name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"{name} did not start on 127.0.0.1:{port} (exit {process.poll()})") from None
            time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@dataclass
class Postgres:
    port: int
    admin_url: str  # the superuser's, on the `postgres` database

    def new_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL (psycopg 3)."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{POSTGRES_USER}@127.0.0.1:{self.port}/{name}"


def _as_server_user(command: list[str]) -> list[str]:
    """The command as the `postgres` user when the tests run as root (initdb and postgres refuse root)."""
    return ["runuser", "-u", POSTGRES_USER, "--", *command] if os.geteuid() == 0 else command


def _wait_accepting(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """PostgreSQL opens its port before it takes connections ("the database system is starting up"): wait for
    `pg_isready` too."""
    deadline = time.monotonic() + timeout
    ready = [str(POSTGRES_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", POSTGRES_USER]
    while subprocess.run(ready, check=False).returncode != 0:
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"PostgreSQL on 127.0.0.1:{port} did not accept connections (exit {process.poll()})")
        time.sleep(0.1)


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A PostgreSQL 15 server in a temporary folder, trusting loopback connections (nothing else can reach it)."""
    if not (POSTGRES_BIN / "postgres").exists():
        raise RuntimeError(f"PostgreSQL 15 is not installed at {POSTGRES_BIN}: run `make system-deps`")
    folder = Path(tempfile.mkdtemp(prefix="supportflow-postgres-"))
    if os.geteuid() == 0:
        account = pwd.getpwnam(POSTGRES_USER)
        os.chown(folder, account.pw_uid, account.pw_gid)
    data = folder / "data"
    subprocess.run(
        _as_server_user([str(POSTGRES_BIN / "initdb"), "-D", str(data), "-U", POSTGRES_USER, "--auth=trust", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        # No durability settings to speed it up: the tests check what a restart keeps. The socket goes in the folder.
        _as_server_user(
            [str(POSTGRES_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(folder), "-c", "listen_addresses=127.0.0.1"]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, server, "PostgreSQL")
        _wait_accepting(port, server)
        yield Postgres(port, f"postgresql://{POSTGRES_USER}@127.0.0.1:{port}/postgres")
    finally:
        stop(server)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def running_redis() -> Iterator[str]:
    """A Redis server on loopback, persisting nothing; its URL (database 1, the one Rasa's lock store uses)."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not installed: run `make system-deps`")
    folder = Path(tempfile.mkdtemp(prefix="supportflow-redis-"))
    port = free_port()
    server = subprocess.Popen(
        [executable, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, server, "Redis")
        yield f"redis://127.0.0.1:{port}/1"
    finally:
        stop(server)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with running_redis() as url:
        yield url
