"""Drive Rasa (in its own Python 3.10 environment) through its command line and HTTP API."""

import os
import subprocess
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


def run_rasa(settings: Settings, project: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    command = [str(rasa_executable(settings)), *args]
    done = subprocess.run(command, cwd=project, env=rasa_environment(project), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise DialogueError(f"`rasa {' '.join(args)}` failed in {project} (exit {done.returncode}):\n{tail}")
    return done


def validate_project(settings: Settings, project: Path) -> str:
    return run_rasa(settings, project, "data", "validate", "--domain", "domain", "--data", "data").stdout


def train_rasa_model(settings: Settings, project: Path, name: str = "supportflow") -> Path:
    """Train and return the model archive (`models/<name>.tar.gz`)."""
    run_rasa(settings, project, "train", "--domain", "domain", "--data", "data", "--fixed-model-name", name, "--out", "models", "--quiet")
    archive = project / "models" / f"{name}.tar.gz"
    if not archive.exists():
        raise DialogueError(f"rasa train finished but {archive} is missing")
    return archive


def test_conversations(settings: Settings, project: Path, model: Path) -> Path | None:
    """Run the desk's conversation tests (`tests/`) against the trained model; returns Rasa's report folder.

    A failed story does not raise here: the caller reads the report, so the failures can name the stories."""
    if not any((project / "tests").glob("*.y*ml")):
        return None
    out = project / "results"
    run_rasa(settings, project, "test", "core", "--model", str(model), "--stories", "tests", "--out", str(out), "--no-plot")
    return out


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
