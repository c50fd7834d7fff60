"""One local Prefect server that every `supportflow` command shares.

Why: without PREFECT_API_URL, every Prefect flow call starts Prefect's ephemeral API server in a subprocess
(database migrations, the server's imports) and stops it when the command exits, so each command paid for a
server start before doing any work, even to ingest three rows. The CLI instead starts `prefect server start`
once, in the background, and later commands point PREFECT_API_URL at it while it answers.

It is the server a person would start for the UI, on the same database as the ephemeral server (PREFECT_HOME's
unless a database URL is configured), so runs made either way show up in one place. Nothing is started when
PREFECT_API_URL is already configured (a team server, Prefect Cloud), nor with
SUPPORTFLOW_PREFECT_SERVER=ephemeral (the tests, which run under Prefect's test harness). `supportflow stop`
ends it.

Prefect reads its settings once, when it is first imported, so the URL must be in the environment before
anything imports Prefect; `use_background_server` leaves Prefect's configuration alone if it is too late.
"""

import contextlib
import fcntl
import os
import signal
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx
import psutil
from pydantic import BaseModel

from supportflow.processes import ManagedProcess, free_port, signal_group
from supportflow.settings import Settings

PREFECT = str(Path(sys.executable).with_name("prefect"))
START_TIMEOUT_S = 180.0  # as long as the Makefile gives the ephemeral server: a first start migrates the database
DATABASE_VARIABLES = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")


class PrefectServer(BaseModel):
    api_url: str
    pid: int
    started_at: float  # the process's creation time: a pid reused by another process is never taken for the server
    database: dict[str, str]  # what chose the database it serves (see `database_identity`)
    log: str

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


def server_file(settings: Settings) -> Path:
    return settings.run_dir / "prefect-server.json"


def _prefect_home(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def configured_api_url(environ: Mapping[str, str] = os.environ) -> str | None:
    """PREFECT_API_URL as Prefect will see it: from the environment, else from the active Prefect profile
    (`prefect config set PREFECT_API_URL=...`). Read without importing Prefect, which would fix its settings."""
    if environ.get("PREFECT_API_URL"):
        return environ["PREFECT_API_URL"]
    profiles = Path(environ.get("PREFECT_PROFILES_PATH") or _prefect_home(environ) / "profiles.toml").expanduser()
    try:
        with profiles.open("rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):  # no profiles file (the default), or one Prefect will complain about itself
        return None
    active = environ.get("PREFECT_PROFILE") or document.get("active") or "ephemeral"
    return document.get("profiles", {}).get(active, {}).get("PREFECT_API_URL") or None


def database_identity(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables that choose the database a server started with this environment serves: a server on
    another PREFECT_HOME would file this command's runs where the UI of the user's own Prefect never shows them."""
    identity = {"PREFECT_HOME": str(_prefect_home(environ).resolve())}
    identity.update({name: environ[name] for name in DATABASE_VARIABLES if environ.get(name)})
    return identity


def _healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _alive(server: PrefectServer) -> bool:
    try:
        process = psutil.Process(server.pid)
        return process.create_time() == server.started_at and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _read_record(settings: Settings) -> PrefectServer | None:
    path = server_file(settings)
    try:
        return PrefectServer.model_validate_json(path.read_text())
    except (OSError, ValueError):  # none recorded, or a record cut short
        return None


def recorded_server(settings: Settings) -> PrefectServer | None:
    """The background server, if one was recorded and still answers."""
    server = _read_record(settings)
    return server if server is not None and _alive(server) and _healthy(server.api_url) else None


@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """Commands started at the same moment share one server instead of starting one each."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with (settings.run_dir / "prefect-server.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _stop(server: PrefectServer, timeout: float = 20) -> None:
    if not _alive(server):
        return
    signal_group(server.pid)
    try:
        psutil.Process(server.pid).wait(timeout)
    except psutil.TimeoutExpired:
        signal_group(server.pid, signal.SIGKILL)
    except psutil.NoSuchProcess:
        pass


def ensure_server(
    settings: Settings, environ: Mapping[str, str] | None = None, on_start: Callable[[], None] | None = None
) -> tuple[PrefectServer, bool]:
    """The recorded server if it answers and serves this environment's database, else a new one (`on_start` is
    told first, so a person knows what the wait is); the flag says whether this call started it. The server
    outlives the caller: it is meant for the next command too."""
    environment = dict(os.environ if environ is None else environ)
    environment.pop("PREFECT_API_URL", None)  # the server is the API; it must not look for another
    database = database_identity(environment)
    with _locked(settings):
        current = _read_record(settings)
        if current is not None and _alive(current):
            if current.database == database and _healthy(current.api_url):
                return current, False
            _stop(current)  # hung, or serving another database: replaced, not left running unrecorded
        if on_start is not None:
            on_start()
        port = free_port()
        log = settings.run_dir / "logs" / "prefect-server.log"
        command = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        health = f"http://127.0.0.1:{port}/api/health"
        # cwd: the server reads the same .env and prefect.toml as the command that starts it
        process = ManagedProcess("prefect server", command, Path.cwd(), environment, health, log).start(START_TIMEOUT_S)
        assert process.pid is not None
        server = PrefectServer(
            api_url=f"http://127.0.0.1:{port}/api",
            pid=process.pid,
            started_at=psutil.Process(process.pid).create_time(),
            database=database,
            log=str(log),
        )
        server_file(settings).write_text(server.model_dump_json(indent=2))
        return server, True


def use_background_server(settings: Settings, on_start: Callable[[], None] | None = None) -> tuple[PrefectServer, bool] | None:
    """For the CLI, before anything imports Prefect: point this process (and the flows it runs) at the background
    server, started if need be. None where Prefect's own configuration stands (see the module's docstring)."""
    if settings.prefect_server == "ephemeral" or configured_api_url() is not None or "prefect" in sys.modules:
        return None
    server, started = ensure_server(settings, on_start=on_start)
    os.environ["PREFECT_API_URL"] = server.api_url
    return server, started


def stop_server(settings: Settings) -> bool:
    """End the background server; returns whether one was running."""
    server = _read_record(settings)
    if server is None:
        return False
    running = _alive(server)
    _stop(server)
    server_file(settings).unlink(missing_ok=True)
    return running
