"""What `supportflow serve --background` leaves running, `serve --supervise`, with three small HTTP servers standing
in for the services (tests/test_cli.py; tests/bot/test_stack.py starts the real four). The one named rasa takes a
`--model`, and the stack's dialogue model is `newer.tar.gz` beside the one it started with: a restarted Rasa must
load production's model of the moment, not its first."""

import sys
from pathlib import Path

from supportflow import cli
from supportflow.processes import ManagedProcess, free_port
from supportflow.release import stack as stacks
from supportflow.settings import Settings

SERVE = (
    "import http.server, sys; http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()"
)


def stand_in(settings: Settings, rasa_project: Path, rasa_model: Path | None, log_dir: Path, **options: object) -> stacks.Stack:
    print(f"stand-in stack: project {rasa_project}, model {rasa_model}, logs {log_dir}, bundles {options.get('bundles')}", flush=True)
    ports = stacks.Ports(bot=free_port(), classifier=free_port(), rasa=free_port())
    services = [
        ManagedProcess(
            name,
            [sys.executable, "-c", SERVE, str(port), *extra],
            log_dir,
            stacks.settings_environment(settings),
            f"http://127.0.0.1:{port}/",
            log_dir / f"{name}.log",
        )
        for name, port, extra in (
            ("classifier", ports.classifier, []),
            ("rasa", ports.rasa, ["--model", str(rasa_model)]),
            ("bot", ports.bot, []),
        )
    ]
    stack = stacks.Stack(ports, [service.start(timeout=60) for service in services])
    stack.dialogue_model = lambda: Path(str(rasa_model)).with_name("newer.tar.gz")
    return stack


if __name__ == "__main__":
    stacks.start_stack = stand_in
    sys.exit(cli.main(["serve", "--supervise"]))
