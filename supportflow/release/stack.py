"""Start the served stack on one machine: the classifier and bot (BentoML), Rasa and its action server.

Every child gets the same configuration as the caller (the settings, passed as SUPPORTFLOW_*
variables). Used by `supportflow serve`, the demo, the integration tests and the serving benchmark.

The services share one internal token (supportflow/internal_auth.py): the configured one, or on loopback a
random one made for this stack. A stack left running keeps it in `<run_dir>/internal_token` (readable by its
owner only), where a promotion and a local Prometheus find it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from pydantic import SecretStr

from supportflow.bot.turns import journal_folder
from supportflow.dialogue.rasa_cli import RASA_SERVICE, action_server, rasa_server
from supportflow.errors import SupportflowError
from supportflow.internal_auth import internal_token, new_internal_token
from supportflow.lake import open_lake
from supportflow.processes import ManagedProcess, ServiceStartError, free_port, signal_group
from supportflow.release.bundle import Bundles, dialogue_archive
from supportflow.settings import PROJECT_ROOT, Settings

BENTOML = str(Path(sys.executable).with_name("bentoml"))


@dataclass(frozen=True)
class Ports:
    bot: int = 3000
    classifier: int = 3001
    rasa: int = 5005
    actions: int = 5055


def settings_environment(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment that gives a child process exactly these settings."""
    env = dict(os.environ)
    settings = settings.anchored()
    for name, value in settings.model_dump(mode="json").items():
        key = f"SUPPORTFLOW_{name.upper()}"
        if value is None:
            env.pop(key, None)
        elif hasattr(getattr(settings, name), "get_secret_value"):  # dumped as '**********': pass the real value
            env[key] = getattr(settings, name).get_secret_value()
        elif isinstance(value, dict | list):
            env[key] = json.dumps(value)
        else:
            env[key] = str(value)
    env.update(
        BENTOML_HOME=str(settings.bentoml_home), BENTOML_DO_NOT_TRACK="true", DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false", **overrides
    )
    return env


CLASSIFIER_SOURCE = "bentos.classifier.service:ClassifierService"
BOT_SOURCE = "bentos.bot.service:BotService"


def classifier_service(settings: Settings, port: int, log_dir: Path, target: str = CLASSIFIER_SOURCE) -> ManagedProcess:
    """`target` is the service in the source tree, or a bento tag (a built bundle)."""
    command = [BENTOML, "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    return ManagedProcess(
        "classifier", command, PROJECT_ROOT, settings_environment(settings), f"http://127.0.0.1:{port}/readyz", log_dir / "classifier.log"
    )


def bot_service(settings: Settings, port: int, log_dir: Path, target: str = BOT_SOURCE) -> ManagedProcess:
    """The one service customers reach: bound to `bind_host` (127.0.0.1 unless set; 0.0.0.0 opens it to the network,
    loopback included, which the health check uses), and told where it is bound, since an agent API open beyond
    this machine must have registered agents."""
    host = settings.bind_host or "127.0.0.1"
    command = [BENTOML, "serve", target, "--host", host, "--port", str(port)]
    env = settings_environment(settings, SUPPORTFLOW_BIND_HOST=host)
    return ManagedProcess("bot", command, PROJECT_ROOT, env, f"http://127.0.0.1:{port}/readyz", log_dir / "bot.log")


WATCH_INTERVAL_S = 2.0  # how often a supervised stack looks for a service that has ended
SUPERVISOR_START_S = 600  # how long `serve --background` waits for its supervisor's stack to be healthy


@dataclass
class Stack:
    ports: Ports
    processes: list[ManagedProcess] = field(default_factory=list)
    internal_token: str = ""  # what /internal/answer, /metrics, Rasa's API and the action server ask for
    # The dialogue model a restarted Rasa loads: production's at that moment, since a promotion since the start
    # loaded a newer one into the Rasa that ended (supportflow/release/promote.py). None: the one it started with.
    dialogue_model: Callable[[], Path] | None = None

    @property
    def bot_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.bot}"

    @property
    def classifier_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.classifier}"

    @property
    def rasa_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.rasa}"

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def revive(self, timeout: float = 300) -> list[str]:
        """Start again each service that has ended (a crash, an out-of-memory kill, kill -9), and say so. Nothing
        waits on a service that is down meanwhile: the bot hands its turns off (Rasa, the classifier), a replica
        takes them, or the channel retries. One that does not come back is tried again on the next call."""
        said = []
        for process in self.processes:
            process.note_workers()
            status = process.exit_status()
            if status is None:
                continue
            if process.name == RASA_SERVICE and self.dialogue_model is not None:
                process.command[process.command.index("--model") + 1] = str(self.dialogue_model())
            try:
                process.restart(timeout)
            except ServiceStartError as error:
                said.append(f"{process.name} ended ({_ending(status)}) and did not start again: {error}")
                continue
            said.append(f"{process.name} ended ({_ending(status)}); started again, pid {process.pid}")
        return said

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_stack(
    settings: Settings,
    rasa_project: Path,
    rasa_model: Path | None,
    log_dir: Path,
    ports: Ports = Ports(),
    timeout: float = 300,
    bundles: Bundles | None = None,
    die_with_parent: bool = False,
) -> Stack:
    """Launch all four services at once (they start in parallel), then wait until each is healthy.

    With `bundles`, the classifier and bot run from those bentos and Rasa from the dialogue model the bot
    bundle carries; otherwise from the source tree and `rasa_model`.
    """
    if bundles is not None:
        rasa_model = dialogue_archive(settings, bundles.dialogue_model)
    if rasa_model is None:
        raise ValueError("start_stack needs a Rasa model or bundles")
    settings = settings.model_copy(
        update={
            "classifier_url": f"http://127.0.0.1:{ports.classifier}",
            "bot_url": f"http://127.0.0.1:{ports.bot}",
            "rasa_url": f"http://127.0.0.1:{ports.rasa}",
            "action_server_url": f"http://127.0.0.1:{ports.actions}",
        }
    )
    token = internal_token(settings) or new_internal_token()
    settings = settings.model_copy(update={"internal_token": SecretStr(token)})
    stack = Stack(ports, internal_token=token)
    if bundles is not None:
        stack.dialogue_model = lambda: _production_dialogue_model(settings, rasa_model)
    stack.processes = [
        classifier_service(settings, ports.classifier, log_dir, bundles.classifier if bundles else CLASSIFIER_SOURCE),
        action_server(settings, rasa_project, ports.actions, settings.bot_url, log_dir / "actions.log", token),
        rasa_server(
            settings,
            rasa_project,
            rasa_model,
            ports.rasa,
            f"{settings.classifier_url}/classify",
            f"{settings.action_server_url}/webhook",
            log_dir / "rasa.log",
            token,
        ),
        bot_service(settings, ports.bot, log_dir, bundles.bot if bundles else BOT_SOURCE),
    ]
    for process in stack.processes:
        process.die_with_parent = die_with_parent
    try:
        for process in stack.processes:
            process.launch()
        for process in stack.processes:
            process.wait_healthy(timeout)
    except BaseException:
        stack.stop()
        raise
    return stack


def _ending(status: int) -> str:
    return f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"


def _production_dialogue_model(settings: Settings, started_with: Path) -> Path:
    from supportflow.release.promote import current_release

    release = current_release(open_lake(settings))
    return dialogue_archive(settings, release.bundles.dialogue_model) if release else started_with


@contextmanager
def scratch_stack(settings: Settings, bundles: Bundles, log_dir: Path) -> Iterator[Stack]:
    """The bundles served on spare ports against a scratch lake, handoff queue and Rasa tracker store, beside whatever
    serves production: what they are asked (a smoke test, an evaluation) never reaches the agents' queue, the drift
    monitor or production's conversations, and their turns are attributed to the bundles' own classifier version. The
    services die with their caller, so a killed check leaves nothing running; the scratch stores go with the stack."""
    scratch = Path(tempfile.mkdtemp(prefix="scratch-stack-"))
    scratch_settings = settings.model_copy(
        update={
            "follow_production": False,
            "model_version": bundles.classifier_version,
            "lake_url": str(scratch / "lake"),
            "handoff_db_url": f"sqlite:///{scratch / 'handoff.db'}",
            "rasa_tracker_store_url": f"sqlite:///{scratch / 'rasa-trackers.db'}",  # its conversations are no customer's
            "rasa_lock_store_url": None,
        }
    )
    ports = Ports(bot=free_port(), classifier=free_port(), rasa=free_port(), actions=free_port())
    try:
        with start_stack(scratch_settings, settings.rasa_project_dir, None, log_dir, ports, bundles=bundles, die_with_parent=True) as stack:
            yield stack
    finally:
        # The scratch bot's turn journal (in the shared run folder) goes with the scratch lake its turns were for.
        shutil.rmtree(journal_folder(scratch_settings.run_dir, open_lake(scratch_settings)), ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def stack_file(settings: Settings) -> Path:
    return settings.run_dir / "stack.json"


def token_file(settings: Settings) -> Path:
    return settings.run_dir / "internal_token"


def recorded_token(settings: Settings) -> str | None:
    """The internal token of the stack left running, for a promotion that loads a model into its Rasa."""
    path = token_file(settings)
    return path.read_text().strip() if path.exists() else None


def record_stack(settings: Settings, stack: Stack, supervisor: int | None = None, rasa_started: bool = True) -> None:
    """Remember a stack left running in the background, so `supportflow stop` and promotions can find it; with the
    process that supervises it, which `stop` asks to end it (else it would start again what was stopped), and the
    dialogue model its Rasa loaded: the one it started with, unless it has not started since a promotion loaded
    another (`rasa_started` False: the record's stands; `loaded_dialogue_model`)."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    rasa = next((p for p in stack.processes if p.name == RASA_SERVICE and "--model" in p.command), None)
    started_with = rasa.command[rasa.command.index("--model") + 1] if rasa else None
    earlier = recorded_stack(settings)
    record = {
        "ports": stack.ports.__dict__,
        "pids": {p.name: p.pid for p in stack.processes},
        "health": {p.name: p.health_url for p in stack.processes},
        "supervisor": supervisor,
        "dialogue_model": started_with if rasa_started or earlier is None else earlier.dialogue_model,
    }
    stack_file(settings).write_text(json.dumps(record, indent=2))
    token_file(settings).unlink(missing_ok=True)
    descriptor = os.open(token_file(settings), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # its owner's alone from the start
    with os.fdopen(descriptor, "w") as out:
        out.write(stack.internal_token)


@dataclass(frozen=True)
class RecordedStack:
    """A stack `record_stack` left serving in the background, as `supportflow status` and `chat` find it."""

    ports: Ports
    health: dict[str, str]  # service name -> the URL that answers 200 while it is ready

    supervisor: int | None = None  # the process that restarts its services, when `serve --background` left one
    dialogue_model: str | None = None  # the archive its Rasa loaded last, as far as this machine's commands know

    @property
    def bot_url(self) -> str:
        return Stack(self.ports).bot_url

    @property
    def classifier_url(self) -> str:
        return Stack(self.ports).classifier_url


def recorded_stack(settings: Settings) -> RecordedStack | None:
    path = stack_file(settings)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return RecordedStack(Ports(**record["ports"]), record.get("health", {}), record.get("supervisor"), record.get("dialogue_model"))


def loaded_dialogue_model(settings: Settings, archive: Path) -> None:
    """Record that the running Rasa loaded `archive` (a promotion's `PUT /model` succeeded)."""
    path = stack_file(settings)
    if path.exists():
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "dialogue_model": str(archive)}, indent=2))


def stop_recorded_stack(settings: Settings) -> list[str]:
    """Stop the background stack; returns the names of what was stopped. Its supervisor goes first and stops the
    services itself; whatever it leaves (a supervisor killed earlier, or too slow) gets SIGTERM here."""
    path = stack_file(settings)
    if not path.exists():
        return []
    record = json.loads(path.read_text())
    running = [name for name, pid in record["pids"].items() if signal_group(pid, 0)]
    if record.get("supervisor"):
        _end(record["supervisor"])
    for pid in record["pids"].values():
        signal_group(pid)
    path.unlink(missing_ok=True)
    token_file(settings).unlink(missing_ok=True)
    return running


def _end(pid: int, timeout: float = 90) -> None:
    """SIGTERM a supervisor and wait until it has stopped its stack."""
    try:
        process = psutil.Process(pid)
        process.terminate()
        process.wait(timeout)
    except (psutil.NoSuchProcess, psutil.TimeoutExpired):
        pass


def supervise(settings: Settings, stack: Stack, done: threading.Event, recorded: bool) -> None:
    """Keep `stack` serving until `done`: each service that ends is started again, and said so on stdout (the
    supervisor's log in the background). `recorded`: the stack is the background one, whose record follows its
    restarted services' pids and goes when it stops."""
    try:
        while not done.wait(WATCH_INTERVAL_S):
            before = {process.name: process.pid for process in stack.processes}
            said = stack.revive()
            for line in said:
                print(line, flush=True)
            if said and recorded:
                rasa_started = any(p.name == RASA_SERVICE and p.pid != before[p.name] for p in stack.processes)
                record_stack(settings, stack, os.getpid(), rasa_started)
    finally:
        stack.stop()
        mine = recorded_stack(settings)
        if recorded and mine is not None and mine.supervisor == os.getpid():
            stack_file(settings).unlink(missing_ok=True)
            token_file(settings).unlink(missing_ok=True)


def serve_in_background(settings: Settings, command: list[str], log_path: Path) -> RecordedStack:
    """Start `command`, a supervisor that serves the stack and records it, detached from this process (it outlives
    it), and return its stack once it is healthy. A supervisor that ends first says why in its log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        child = subprocess.Popen(command, env=settings_environment(settings), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + SUPERVISOR_START_S
    while time.monotonic() < deadline:
        stack = recorded_stack(settings)
        if stack is not None and stack.supervisor == child.pid:
            return stack
        if child.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").strip().splitlines()[-8:])
            raise SupportflowError(f"the bot did not start (the supervisor exited with status {child.returncode}; {log_path}):\n{tail}")
        time.sleep(0.5)
    _end(child.pid)
    raise SupportflowError(f"the bot was not serving within {SUPERVISOR_START_S} s; see {log_path}")
