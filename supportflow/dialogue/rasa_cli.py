"""Drive Rasa (in its own Python 3.10 environment) through its command line and HTTP API."""

import json
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from supportflow.dialogue.stores import store_environment
from supportflow.errors import SupportflowError
from supportflow.processes import ManagedProcess
from supportflow.settings import Settings


class DialogueError(SupportflowError):
    """Rasa is missing, rejects the project, or does not start."""


def rasa_executable(settings: Settings) -> Path:
    executable = settings.rasa_venv.resolve() / "bin" / "rasa"
    if not executable.exists():
        raise DialogueError(f"Rasa is not installed at {settings.rasa_venv}: run `make rasa-venv` (Rasa 3.6 needs its own Python 3.10)")
    return executable


def rasa_environment(project: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHONHOME"))}
    env.update(
        RASA_TELEMETRY_ENABLED="false",
        PYTHONPATH=str(project),
        TF_CPP_MIN_LOG_LEVEL="3",
        SQLALCHEMY_SILENCE_UBER_WARNING="1",
        **(extra or {}),
    )
    return env


class RasaCommandError(DialogueError):
    """A Rasa command exited with an error; `command` names it (its arguments after `rasa`)."""

    def __init__(self, message: str, command: Sequence[str]) -> None:
        super().__init__(message)
        self.command = tuple(command)


def _failed(project: Path, args: Sequence[str], code: int, output: str) -> RasaCommandError:
    tail = "\n".join(output.strip().splitlines()[-15:])
    return RasaCommandError(f"`rasa {' '.join(args)}` failed in {project} (exit {code}):\n{tail}", args)


def run_rasa(settings: Settings, project: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    command = [str(rasa_executable(settings)), *args]
    done = subprocess.run(command, cwd=project, env=rasa_environment(project), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise _failed(project, args, done.returncode, done.stdout + done.stderr)
    return done


# Several Rasa commands in one interpreter: importing Rasa and TensorFlow is most of what a command costs on a small
# desk (docs/pipeline.md), and a dialogue build runs three. Each is Rasa's own command line (`rasa.__main__.main`)
# with its arguments; a line on stdout and on stderr closes each one's output with its exit status, and the first that
# fails ends the run.
FINISHED = "supportflow: rasa command finished with exit status"
IN_ONE_PROCESS = f"""import json, sys
from rasa.__main__ import main
for args in json.loads(sys.argv[1]):
    sys.argv = ['rasa', *args]
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    print('\\n{FINISHED}', code, flush=True)
    print('\\n{FINISHED}', code, file=sys.stderr, flush=True)
    if code:
        sys.exit(code)
"""


def run_rasa_commands(settings: Settings, project: Path, commands: Sequence[Sequence[str]], timeout: float = 900) -> list[str]:
    """`run_rasa` for each command in turn, in one process; returns each one's output (stdout, then stderr, where
    Rasa logs). The first that fails raises `RasaCommandError` naming it, and the rest do not run."""
    python = rasa_executable(settings).with_name("python")
    argv = [str(python), "-c", IN_ONE_PROCESS, json.dumps([list(args) for args in commands])]
    done = subprocess.run(argv, cwd=project, env=rasa_environment(project), capture_output=True, text=True, timeout=timeout)
    closing = re.compile(rf"\n{re.escape(FINISHED)} (-?\d+)\n")
    out, err = closing.split(done.stdout), closing.split(done.stderr)
    codes = [int(code) for code in out[1::2]]
    outputs = [a + b for a, b in zip(out[0::2], err[0::2], strict=False)]  # one more than codes: what came after the last
    if done.returncode != 0 or len(codes) < len(commands):
        failed = len(codes) - 1 if codes and codes[-1] else len(codes)  # a crash leaves no status line
        code = codes[failed] if failed < len(codes) else done.returncode
        raise _failed(project, commands[failed], code, outputs[failed])
    return outputs[: len(commands)]


VALIDATE = ("data", "validate", "--domain", "domain", "--data", "data")  # `rasa data validate` on a project's files


def _train_args(name: str) -> list[str]:
    return ["train", "--domain", "domain", "--data", "data", "--fixed-model-name", name, "--out", "models", "--quiet"]


def _test_args(model: Path, out: Path) -> list[str]:
    return ["test", "core", "--model", str(model), "--stories", "tests", "--out", str(out), "--no-plot"]


def _archive(project: Path, name: str) -> Path:
    """Where `rasa train` (`_train_args(name)`) writes the model archive."""
    return project / "models" / f"{name}.tar.gz"


def _trained(archive: Path) -> Path:
    if not archive.exists():
        raise DialogueError(f"rasa train finished but {archive} is missing")
    return archive


def train_rasa_model(settings: Settings, project: Path, name: str = "supportflow") -> Path:
    """Train and return the model archive (`models/<name>.tar.gz`)."""
    run_rasa(settings, project, *_train_args(name))
    return _trained(_archive(project, name))


@dataclass(frozen=True)
class BuiltProject:
    validation: str  # what `rasa data validate` said
    model: Path
    report: Path | None  # Rasa's report of the desk's conversation tests, when it has some


def validate_train_and_test(settings: Settings, project: Path, name: str = "supportflow") -> BuiltProject:
    """Validate the project, train its model (`train_rasa_model`) and run the desk's conversation tests (`tests/`)
    against it, in one Rasa process (`run_rasa_commands`). A failed story does not raise: the caller reads the report,
    so the failures can name the stories."""
    model, out = _archive(project, name), project / "results"
    tests = any((project / "tests").glob("*.y*ml"))
    commands = [VALIDATE, _train_args(name), *([_test_args(model, out)] if tests else [])]
    outputs = run_rasa_commands(settings, project, commands)
    return BuiltProject(outputs[0], _trained(model), out if tests else None)


RASA_SERVICE = "rasa"  # the dialogue server's name among a stack's services: the one started with `--model`

# Rasa reads its API token only from `--auth-token`, and a command line is anyone's to read (`ps`): the token goes in
# the environment, which only the process's owner can read, and is appended to Rasa's own arguments inside the
# process. One argument (`--auth-token=...`): a token starting with "-" would read as an option.
WITH_AUTH_TOKEN = (
    "import os, sys; from rasa.__main__ import main; "
    "sys.argv = ['rasa', *sys.argv[1:], '--auth-token=' + os.environ['SUPPORTFLOW_INTERNAL_TOKEN']]; sys.exit(main())"
)


def rasa_server(
    settings: Settings,
    project: Path,
    model: Path,
    port: int,
    classifier_url: str,
    action_webhook_url: str,
    log_path: Path,
    internal_token: str,
) -> ManagedProcess:
    """Rasa on loopback. Its HTTP API stays on because a promotion on one machine loads the new model into it
    (`PUT /model`, supportflow/release/promote.py), behind the internal token (Rasa's `?token=`); the REST
    channel the bot talks to needs none, so readiness is checked there. Its conversations live in the tracker store
    the settings name (stores.py), so a restarted Rasa continues them."""
    command = [
        str(rasa_executable(settings).with_name("python")),
        "-c",
        WITH_AUTH_TOKEN,
        "run",
        "--enable-api",
        "--model",
        str(model),
        "--port",
        str(port),
        "--interface",
        "127.0.0.1",
    ]
    command += ["--endpoints", "endpoints.yml", "--credentials", "credentials.yml"]
    settings.run_dir.mkdir(parents=True, exist_ok=True)  # where the default tracker store's SQLite file goes
    env = rasa_environment(
        project,
        {
            "SUPPORTFLOW_CLASSIFY_URL": classifier_url,
            "SUPPORTFLOW_ACTION_WEBHOOK_URL": action_webhook_url,
            "SUPPORTFLOW_INTERNAL_TOKEN": internal_token,  # endpoints.yml sends it to the action server
            **store_environment(settings),
        },
    )
    return ManagedProcess(RASA_SERVICE, command, project, env, f"http://127.0.0.1:{port}/webhooks/rest/", log_path)


def action_server(settings: Settings, project: Path, port: int, bot_url: str, log_path: Path, internal_token: str) -> ManagedProcess:
    """On loopback (rasa-sdk reads its interface from SANIC_HOST; 0.0.0.0 otherwise), asking Rasa for the
    internal token (rasa_sdk_plugins.py) and sending it to the bot."""
    command = [str(rasa_executable(settings)), "run", "actions", "--actions", "actions", "--port", str(port)]
    env = rasa_environment(
        project, {"SUPPORTFLOW_BOT_URL": bot_url, "SUPPORTFLOW_INTERNAL_TOKEN": internal_token, "SANIC_HOST": "127.0.0.1"}
    )
    return ManagedProcess("rasa action server", command, project, env, f"http://127.0.0.1:{port}/health", log_path)
