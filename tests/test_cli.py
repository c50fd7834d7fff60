"""The `supportflow` command as a person meets it: --version, errors on a terminal, `status`, `chat`, and the
background Prefect server the flow commands share."""

import io
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import psutil
import pytest

from supportflow.processes import ManagedProcess, free_port
from supportflow.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def cli_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "PREFECT_API_URL")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture
def empty_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Every place the CLI reads from, empty and under tmp_path."""
    for name, value in {
        "LAKE_URL": tmp_path / "lake",
        "RUN_DIR": tmp_path / "run",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "KB_DIR": tmp_path / "kb",
        "RASA_PROJECT_DIR": tmp_path / "rasa",
        "BENTOML_HOME": tmp_path / "bentoml",
        "GX_ROOT": tmp_path / "gx",
        "HANDOFF_DB_URL": f"sqlite:///{tmp_path / 'handoff.db'}",
    }.items():
        monkeypatch.setenv(f"SUPPORTFLOW_{name}", str(value))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_version() -> None:
    done = subprocess.run([sys.executable, "-m", "supportflow.cli", "--version"], env=cli_environment(), capture_output=True, text=True)

    assert (done.returncode, done.stdout) == (0, "supportflow 0.1.0\n")


def run_on_a_terminal(args: list[str], **env: str) -> tuple[int, str]:
    """The CLI with stdout and stderr on a pseudo-terminal, as in a person's shell."""
    controller, terminal = pty.openpty()
    command = [sys.executable, "-m", "supportflow.cli", *args]
    process = subprocess.Popen(command, stdout=terminal, stderr=terminal, env=cli_environment(TERM="xterm-256color", **env))
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: the process exited
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return process.wait(timeout=60), output.decode()


def test_an_error_on_a_terminal_is_one_red_line_and_plain_with_no_color() -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    status, coloured = run_on_a_terminal(["chat", "--url", dead])
    status_plain, plain = run_on_a_terminal(["chat", "--url", dead], NO_COLOR="1")

    expected = f"supportflow: error: no bot answers at {dead} (ConnectError): start one with `supportflow serve --background`"
    assert status == status_plain == 2
    assert "\x1b[31m" in coloured  # red
    assert ANSI.sub("", coloured).strip() == expected
    assert plain.strip() == expected
    assert "Traceback" not in coloured + plain


def test_an_error_off_a_terminal_is_plain(capsys: pytest.CaptureFixture[str]) -> None:
    from supportflow.cli import main

    dead = f"http://127.0.0.1:{free_port()}"
    long_url = dead + "/" + "x" * 200  # longer than any terminal: still one line

    assert main(["chat", "--url", long_url]) == 2

    err = capsys.readouterr().err
    assert err == f"supportflow: error: no bot answers at {long_url} (ConnectError): start one with `supportflow serve --background`\n"


def test_status_on_an_empty_store(empty_store: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from supportflow.cli import main

    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert main(["status"]) == 0
    table = capsys.readouterr().out

    assert status["release"] is None
    assert status["classifier"]["production"] is None and status["classifier"]["champion"] is None
    assert "nothing trained" in status["classifier"]["note"]
    assert status["knowledge_base"]["build"] is None and "supportflow kb-index" in status["knowledge_base"]["note"]
    assert status["dialogue"] == {"model": None, "source": None, "note": None}
    assert status["services"] == [] and status["supervisor"] is None
    assert status["prefect"] == {"api_url": None, "ui_url": None, "source": None}
    assert not (tmp_path / "mlflow.db").exists()  # reading the status created no registry
    assert "nothing released yet" in table and "nothing serving" in table


def test_evaluate_says_what_is_missing_before_it_asks_anything(
    empty_store: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The evaluation itself runs against a real served bot in tests/bot/test_stack.py."""
    from supportflow.cli import main

    export = tmp_path / "export.csv"
    export.write_text("message,category\nmy card has not arrived,card_arrival\n")
    dead = f"http://127.0.0.1:{free_port()}"
    cases = [
        (["evaluate"], "no training snapshot in the lake"),
        (["evaluate", "--file", str(export)], "nothing is released yet: run the pipeline first, or evaluate a running bot with --bot-url"),
        (["evaluate", "--file", str(export), "--bot-url", dead], f"no supportflow bot answers at {dead} (ConnectError"),
        (["evaluate", "--file", str(export), "--limit", "-1"], "the limit must be 0 (all) or more"),
        (["evaluate", "--file", str(tmp_path / "missing.csv")], "missing.csv: no such file"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        captured = capsys.readouterr()
        assert captured.err.startswith("supportflow: error: ") and message in captured.err, (args, captured.err)
        assert "Traceback" not in captured.err and captured.out == ""


class FakeBot(BaseHTTPRequestHandler):
    """Speaks the bot's HTTP shape (bentos/bot/service.py): /readyz, and /chat's replies, route and intent; a first
    message starts a conversation whose id and token come back, and later ones must show that token."""

    received: ClassVar[list[dict]] = []
    started: ClassVar[int] = 0

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/readyz" else 404, {})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeBot.received.append({**body, "token": self.headers.get("X-Conversation-Token")})
        started = "conversation_id" not in body
        if started:
            FakeBot.started += 1
            body["conversation_id"] = f"web-{FakeBot.started}"
        elif self.headers.get("X-Conversation-Token") != f"token-{body['conversation_id']}":
            self._answer(403, {"detail": "unknown conversation, or a missing or wrong X-Conversation-Token"})
            return
        if body["message"] == "too long":
            self._answer(413, {"detail": "the message is longer than 4000 characters", "request_id": "r1"})
            return
        reply = {"replies": [f"you said: {body['message']}"], "route": "kb", "intent": "card_arrival", "confidence": 0.9}
        token = {"conversation_token": f"token-{body['conversation_id']}"} if started else {}
        self._answer(200, {"conversation_id": body["conversation_id"], **reply, "request_id": "r2", **token})

    def _answer(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_bot() -> Iterator[str]:
    FakeBot.received, FakeBot.started = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeBot)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def chat(url: str, typed: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from supportflow.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    status = main(["chat", "--url", url])
    return status, capsys.readouterr().out


def test_chat_talks_to_the_bot_until_quit(fake_bot: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = chat(fake_bot, "hello\n\ntoo long\nmy card never came\n/quit\nnot sent\n", monkeypatch, capsys)

    assert status == 0
    assert [body["message"] for body in FakeBot.received] == ["hello", "too long", "my card never came"]
    first, *later = FakeBot.received
    assert "conversation_id" not in first and first["token"] is None  # the bot names the conversation
    assert [(body["conversation_id"], body["token"]) for body in later] == [("web-1", "token-web-1")] * 2
    assert "bot: you said: hello  (kb, card_arrival)" in out
    assert "bot: the message is longer than 4000 characters\n" in out
    assert "bot: you said: my card never came  (kb, card_arrival)" in out
    assert "not sent" not in out

    status, _ = chat(fake_bot, "again\n", monkeypatch, capsys)  # ends at end of input too

    assert status == 0
    assert "conversation_id" not in FakeBot.received[-1]  # a new session is a new conversation


def test_chat_finds_the_served_bot_and_status_checks_its_health(
    empty_store: Settings, fake_bot: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from supportflow.cli import main
    from supportflow.release.stack import Ports, Stack, record_stack

    assert main(["chat"]) == 2
    assert "no bot is serving: start one with `supportflow serve --background`" in capsys.readouterr().err

    bot_port, dead_port = int(fake_bot.rsplit(":", 1)[1]), free_port()
    processes = [
        ManagedProcess("classifier", ["true"], tmp_path, {}, f"http://127.0.0.1:{dead_port}/readyz", tmp_path / "c.log"),
        ManagedProcess("bot", ["true"], tmp_path, {}, f"{fake_bot}/readyz", tmp_path / "b.log"),
    ]
    record_stack(empty_store, Stack(Ports(bot=bot_port, classifier=dead_port), processes))

    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    assert main(["chat"]) == 0
    assert "bot: you said: hi  (kb, card_arrival)" in capsys.readouterr().out

    assert main(["status", "--json"]) == 0
    services = {s["name"]: s for s in json.loads(capsys.readouterr().out)["services"]}
    assert services["bot"] == {"name": "bot", "url": fake_bot, "health_url": f"{fake_bot}/readyz", "healthy": True}
    assert services["classifier"]["healthy"] is False


def test_serve_refuses_without_a_release_or_a_dialogue_model(empty_store: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    from supportflow.cli import main
    from supportflow.release.stack import recorded_stack

    assert main(["serve", "--background"]) == 2
    model = empty_store.rasa_project_dir / "models" / "supportflow.tar.gz"
    err = capsys.readouterr().err
    assert err == f"supportflow: error: no release and no dialogue model at {model}: run `supportflow demo` (or the pipeline) first\n"
    assert recorded_stack(empty_store) is None


def test_serve_in_the_background_leaves_a_supervisor_that_restarts_a_killed_service_and_stop_ends_it(
    empty_store: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands' wiring: `serve --background` leaves a supervisor that serves what `serve` serves (no release yet:
    the dialogue model in the Rasa project) and records the stack; a service killed with SIGKILL is started again,
    Rasa on production's dialogue model of the moment; `serve` again replaces the stack, and `stop` ends it.
    tests/stand_in_supervisor.py stands in small HTTP servers for the services that tests/bot/test_stack.py starts."""
    from supportflow import cli
    from supportflow.release import stack as stacks

    model = empty_store.rasa_project_dir / "models" / "supportflow.tar.gz"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"a dialogue model")
    monkeypatch.setattr(cli, "SUPERVISOR", [sys.executable, str(Path(__file__).with_name("stand_in_supervisor.py"))])
    log = empty_store.run_dir / "logs" / "supervisor.log"

    def pids() -> dict[str, int]:
        return json.loads(stacks.stack_file(empty_store).read_text())["pids"]

    assert cli.main(["serve", "--background"]) == 0
    first = stacks.recorded_stack(empty_store)
    out = capsys.readouterr().out
    assert f"  webchat:       {first.bot_url}/" in out and out.endswith("stop it with `supportflow stop` (or `make stop`)\n")
    assert f"stand-in stack: project {empty_store.rasa_project_dir}, model {model}, logs {empty_store.run_dir / 'logs'}, bundles None" in (
        log.read_text()
    )
    supervisor = psutil.Process(first.supervisor)
    assert httpx.get(first.bot_url, timeout=10).status_code == 200
    assert cli.main(["status", "--json"]) == 0 and json.loads(capsys.readouterr().out)["supervisor"] == first.supervisor
    assert first.dialogue_model == str(model)

    killed = pids()["rasa"]
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while pids()["rasa"] == killed and time.monotonic() < deadline:
        time.sleep(0.2)
    restarted = psutil.Process(pids()["rasa"])
    assert restarted.cmdline()[-2:] == ["--model", str(model.with_name("newer.tar.gz"))]  # production's model now, not its first
    assert httpx.get(f"http://127.0.0.1:{first.ports.rasa}/", timeout=10).status_code == 200
    assert "rasa ended (killed by SIGKILL); started again, pid" in log.read_text()
    assert stacks.recorded_stack(empty_store).dialogue_model == str(model.with_name("newer.tar.gz"))

    assert cli.main(["serve", "--background"]) == 0  # again: the stack it left is stopped first, supervisor and all
    second = stacks.recorded_stack(empty_store)
    assert not supervisor.is_running() and not restarted.is_running() and second.supervisor != first.supervisor
    capsys.readouterr()

    running = [psutil.Process(pid) for pid in [second.supervisor, *pids().values()]]
    assert cli.main(["stop"]) == 0
    assert capsys.readouterr().out == "stopped: classifier, rasa, bot\n"
    assert not [p for p in running if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert stacks.recorded_stack(empty_store) is None
    assert cli.main(["stop"]) == 0 and capsys.readouterr().out == "nothing was running\n"


def test_the_cli_leaves_prefect_alone_when_told_or_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from supportflow.prefect_server import configured_api_url, server_file, use_background_server

    settings = Settings(run_dir=tmp_path / "run", prefect_server="ephemeral")
    assert use_background_server(settings) is None
    assert not server_file(settings).exists()

    home = tmp_path / "prefect"
    home.mkdir()
    (home / "profiles.toml").write_text('active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://prefect.example:4200/api"\n')
    assert configured_api_url({"PREFECT_HOME": str(home)}) == "http://prefect.example:4200/api"
    assert configured_api_url({"PREFECT_HOME": str(home), "PREFECT_API_URL": "http://other/api"}) == "http://other/api"
    assert configured_api_url({"PREFECT_HOME": str(home), "PREFECT_PROFILE": "ephemeral"}) is None
    assert configured_api_url({"PREFECT_HOME": str(tmp_path / "nothing")}) is None


@pytest.mark.slow
def test_the_background_prefect_server_starts_once_is_reused_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from supportflow.prefect_server import ensure_server, recorded_server, server_file, stop_server

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    settings = Settings(run_dir=tmp_path / "run", lake_url=str(tmp_path / "lake"), gx_root=tmp_path / "gx")
    try:
        server, started = ensure_server(settings)
        again, started_again = ensure_server(settings)

        assert started and not started_again
        assert again == server and recorded_server(settings) == server
        assert server.api_url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{server.api_url}/health", timeout=5).json() is True
        assert server.database == {"PREFECT_HOME": str((tmp_path / "prefect").resolve())}
        assert (tmp_path / "prefect" / "prefect.db").exists()  # the database the ephemeral API would use

        # a command in a new process, as a person runs it: its flow run goes to this server
        tickets = tmp_path / "tickets.csv"
        tickets.write_text("text,intent\nmy card has not arrived,card_arrival\n")
        env = cli_environment(
            SUPPORTFLOW_PREFECT_SERVER="background",
            SUPPORTFLOW_RUN_DIR=str(tmp_path / "run"),
            SUPPORTFLOW_LAKE_URL=str(tmp_path / "lake"),
            SUPPORTFLOW_GX_ROOT=str(tmp_path / "gx"),
            PREFECT_HOME=str(tmp_path / "prefect"),
        )
        done = subprocess.run([sys.executable, "-m", "supportflow.cli", "ingest", str(tickets)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "starting a Prefect server" not in done.stderr
        assert f"View at {server.ui_url}/runs/flow-run/" in done.stderr
        runs = httpx.post(f"{server.api_url}/flow_runs/filter", json={}, timeout=10).json()
        assert [run["state_type"] for run in runs] == ["COMPLETED"]

        assert stop_server(settings) is True
        assert not psutil.pid_exists(server.pid)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.api_url}/health", timeout=5)
        assert not server_file(settings).exists() and recorded_server(settings) is None
        assert stop_server(settings) is False
    finally:
        stop_server(settings)


@pytest.mark.slow  # two CLI processes run their flows on the test harness's API: over a minute
def test_ingest_and_validate_print_their_reports_as_json(empty_store: Settings, banking77_sample: Path, prefect_harness: None) -> None:
    """As a program calls them: a subprocess whose stdout is one JSON document (progress and logs go elsewhere)."""
    from prefect.settings import PREFECT_API_URL

    environment = cli_environment(PREFECT_API_URL=str(PREFECT_API_URL.value()))  # the test harness's API: no server to start

    def run(*args: str) -> object:
        done = subprocess.run(
            [sys.executable, "-m", "supportflow.cli", *args], capture_output=True, text=True, env=environment, timeout=300
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    (ingested,) = run("ingest", str(banking77_sample), "--json")
    assert ingested["file"] == str(banking77_sample)
    assert ingested["written"] > 0
    assert ingested["rows_read"] == ingested["written"] + ingested["duplicates"] + ingested["quarantined"]
    manifest = run("validate", "--json")
    assert manifest["snapshot_id"].startswith("snap-")
    assert manifest["validation"]["accepted"] == sum(manifest["rows"].values())


def test_init_without_an_export_writes_the_skeleton_and_says_what_to_run_next(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from supportflow.cli import main

    folder = tmp_path / "my-desk"

    assert main(["init", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert f"workspace my-desk at {folder}" in printed
    assert "4 intents any desk has: account_access, contact_and_hours, feedback_or_complaint, cancellation" in printed
    assert "64 labelled example tickets" in printed
    assert f"supportflow --workspace {folder} demo" in printed and f"supportflow --workspace {folder} chat" in printed

    assert main(["init", str(folder)]) == 2  # never over a workspace
    assert "is not empty" in capsys.readouterr().err
    assert main(["init", str(tmp_path / "other"), "--encoding", "cp1252"]) == 2
    assert "--encoding: only with --from-tickets" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_init_from_tickets_names_the_columns_and_says_what_to_run_next(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from supportflow.cli import main

    export = tmp_path / "export.csv"
    export.write_text("message,category\nmy refund never came,refund\nI cannot log in,login\nlocked out again,login\n")
    folder = tmp_path / "shop"
    for field_map, reason in (
        ('["text", "intent"]', "a field map is an object from ticket field to column name"),
        ('{"text": "message", "intnet": "category"}', "'intnet' is not a ticket field; the fields are text, intent,"),
        ('{"text": 1}', "a field map is an object from ticket field to column name"),
    ):
        assert main(["init", str(folder), "--from-tickets", str(export), "--field-map", field_map]) == 2
        assert f"--field-map: {reason}" in capsys.readouterr().err
        assert not folder.exists()

    assert main(["init", str(folder), "--from-tickets", str(export), "--field-map", '{"text": "message", "intent": "category"}']) == 0
    printed = capsys.readouterr().out
    assert f"workspace shop at {folder}" in printed and "2 intents with their ticket counts" in printed
    assert f"make demo WORKSPACE={folder}" in printed and f"supportflow --workspace {folder} demo" in printed
    assert sorted(path.name for path in (folder / "kb").iterdir()) == ["login.md", "refund.md"]


def test_agents_are_added_with_a_token_shown_once_listed_and_removed(empty_store: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    from supportflow.bot.agents import Agents
    from supportflow.cli import main

    assert main(["agent", "add", "ann"]) == 0
    token = capsys.readouterr().out.splitlines()[-1]
    agents = Agents(empty_store.handoff_db_url)
    assert agents.identify(token, open_when_none=False) == "ann" and agents.identify(token[:-1], open_when_none=False) is None
    assert main(["agent", "add", "ann"]) == 2
    assert "agent 'ann' exists: remove it first" in capsys.readouterr().err
    assert main(["agent", "add", "bad name"]) == 2 and "agent name 'bad name'" in capsys.readouterr().err
    assert main(["agent", "list"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("ann  (added ") and token not in listed
    assert token not in Path(empty_store.handoff_db_url.removeprefix("sqlite:///")).read_bytes().decode("latin-1")  # a hash at rest
    assert main(["agent", "remove", "ann"]) == 0 and agents.identify(token, open_when_none=False) is None
    assert main(["agent", "remove", "ann"]) == 2 and "no agent 'ann'" in capsys.readouterr().err
    assert main(["agent", "list"]) == 0 and "no agent is registered" in capsys.readouterr().out
