"""Start the served stack on one machine: the classifier and bot (BentoML), Rasa and its action server.

Every child gets the same configuration as the caller (the settings, passed as SUPPORTFLOW_*
variables). Used by `supportflow serve`, the demo, the integration tests and the serving benchmark.
"""

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from supportflow.dialogue.rasa_cli import action_server, rasa_server
from supportflow.processes import ManagedProcess
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
    env.update(BENTOML_DO_NOT_TRACK="true", DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false", **overrides)
    return env


def classifier_service(settings: Settings, port: int, log_dir: Path) -> ManagedProcess:
    command = [BENTOML, "serve", "bentos.classifier.service:ClassifierService", "--host", "127.0.0.1", "--port", str(port)]
    return ManagedProcess(
        "classifier", command, PROJECT_ROOT, settings_environment(settings), f"http://127.0.0.1:{port}/readyz", log_dir / "classifier.log"
    )


def bot_service(settings: Settings, port: int, log_dir: Path) -> ManagedProcess:
    command = [BENTOML, "serve", "bentos.bot.service:BotService", "--host", "127.0.0.1", "--port", str(port)]
    return ManagedProcess(
        "bot", command, PROJECT_ROOT, settings_environment(settings), f"http://127.0.0.1:{port}/readyz", log_dir / "bot.log"
    )


@dataclass
class Stack:
    ports: Ports
    processes: list[ManagedProcess] = field(default_factory=list)

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

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_stack(
    settings: Settings, rasa_project: Path, rasa_model: Path, log_dir: Path, ports: Ports = Ports(), timeout: float = 300
) -> Stack:
    """Launch all four services at once (they start in parallel), then wait until each is healthy."""
    settings = settings.model_copy(
        update={
            "classifier_url": f"http://127.0.0.1:{ports.classifier}",
            "bot_url": f"http://127.0.0.1:{ports.bot}",
            "rasa_url": f"http://127.0.0.1:{ports.rasa}",
            "action_server_url": f"http://127.0.0.1:{ports.actions}",
        }
    )
    stack = Stack(ports)
    stack.processes = [
        classifier_service(settings, ports.classifier, log_dir),
        action_server(settings, rasa_project, ports.actions, settings.bot_url, log_dir / "actions.log"),
        rasa_server(
            settings,
            rasa_project,
            rasa_model,
            ports.rasa,
            f"{settings.classifier_url}/classify",
            f"{settings.action_server_url}/webhook",
            log_dir / "rasa.log",
        ),
        bot_service(settings, ports.bot, log_dir),
    ]
    try:
        for process in stack.processes:
            process.launch()
        for process in stack.processes:
            process.wait_healthy(timeout)
    except BaseException:
        stack.stop()
        raise
    return stack


RUN_DIR = PROJECT_ROOT / ".run"
STACK_FILE = RUN_DIR / "stack.json"


def record_stack(stack: Stack) -> None:
    """Remember a stack left running in the background, so `supportflow stop` can end it."""
    RUN_DIR.mkdir(exist_ok=True)
    STACK_FILE.write_text(json.dumps({"ports": stack.ports.__dict__, "pids": {p.name: p.pid for p in stack.processes}}, indent=2))


def stop_recorded_stack() -> list[str]:
    """Stop the background stack; returns the names of what was stopped."""
    import signal

    if not STACK_FILE.exists():
        return []
    stopped = []
    for name, pid in json.loads(STACK_FILE.read_text())["pids"].items():
        try:
            os.killpg(pid, signal.SIGTERM)
            stopped.append(name)
        except ProcessLookupError:
            pass
    STACK_FILE.unlink()
    return stopped
