"""Issue 13, items 2 and 5: each door an attacker could use on the internal routes or to exhaust the bot, sent
the attacker's request and shown refused.

The bot is the real BentoML service (its ASGI app, served by uvicorn on a spare port) with a stand-in Rasa that
does what Rasa and its action server do on each turn: call `/internal/answer` with the internal token, or say
the bot was unreachable. The action server and the classifier component run for real in Rasa's environment.
"""

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest
import uvicorn
from pydantic import SecretStr

from supportflow.bot import metrics
from supportflow.bot.engine import BOT_UNREACHABLE, PAYLOAD_KEY, SupportBot
from supportflow.bot.handoff import HandoffQueue
from supportflow.bot.llm import LLMResponder
from supportflow.bot.memory import Transcripts
from supportflow.bot.turns import TurnLog, read_turns
from supportflow.internal_auth import InternalAuthError, InternalRoutes, internal_token
from supportflow.keys import ConversationKeys, conversation_keys
from supportflow.lake import Lake, open_lake
from supportflow.processes import free_port
from supportflow.settings import Settings, get_settings
from supportflow.validate.catalogue import load_catalogue

ROOT = Path(__file__).resolve().parents[2]
RASA_FILES = ROOT / "supportflow" / "dialogue" / "rasa_files"
RASA_PYTHON = ROOT / ".venv-rasa" / "bin" / "python"
TOKEN = "k3P9-internal-token-for-the-doors-test-0b1f"
UNREACHABLE = {PAYLOAD_KEY: BOT_UNREACHABLE, "transcript": []}
CALLBACK_S = 0.5  # how long the stand-in Rasa takes before its action calls back: turns overlap
FALLBACK = "Sorry, something went wrong on our side. Let me connect you with a colleague."


@dataclass
class StandInRasa:
    """Rasa's REST channel as the bot sees it: each message runs one action, which asks the bot's
    `/internal/answer` (with the token) and utters the reply and its outcome; a bot it cannot reach in time gets
    the action server's apology and marker."""

    bot_url: str = ""
    callbacks: list[int] = field(default_factory=list)  # the status of each callback

    def reply(self, body: dict) -> list[dict]:
        sender, metadata = body["sender"], body.get("metadata") or {}
        if body["message"] == "the action server cannot reach you":
            return [{"recipient_id": sender, "text": FALLBACK}, {"recipient_id": sender, "custom": UNREACHABLE}]
        time.sleep(CALLBACK_S)
        request = {"kind": "clarify", "conversation_id": sender, "request_id": metadata.get("request_id"), "text": body["message"]}
        try:
            answered = httpx.post(f"{self.bot_url}/internal/answer", json=request, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        except httpx.HTTPError:
            return [{"recipient_id": sender, "text": FALLBACK}, {"recipient_id": sender, "custom": UNREACHABLE}]
        self.callbacks.append(answered.status_code)
        said = [{"recipient_id": sender, "text": text} for text in answered.json()["messages"]]
        return [*said, {"recipient_id": sender, "custom": answered.json()["custom"]}]

    def serve(self) -> ThreadingHTTPServer:
        return serve_json(self.reply)


def uttered(sender: str, answered: object) -> list[dict]:
    """What Rasa's REST channel returns for an action that answered: its messages, then the outcome payload."""
    return [*({"recipient_id": sender, "text": text} for text in answered.messages), {"custom": answered.custom}]


def serve_json(reply: Callable[[dict], list[dict]]) -> ThreadingHTTPServer:
    """A JSON-over-POST server on a free loopback port, answering each body with `reply(body)`: a stand-in Rasa."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            out = json.dumps(reply(body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128  # the listen backlog: the default 5 resets connections when the bot's turns arrive at once

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class ServedBot:
    url: str
    settings: Settings
    rasa: StandInRasa

    def handoffs(self) -> list[dict]:
        lake = open_lake(self.settings)
        return HandoffQueue(self.settings.handoff_db_url, lake, load_catalogue(self.settings.catalogue_file).intents).page().handoffs


@pytest.fixture(scope="module")
def served_bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedBot]:
    folder = tmp_path_factory.mktemp("doors")
    rasa = StandInRasa()
    rasa_server = rasa.serve()
    port = free_port()
    environment = {
        "SUPPORTFLOW_LAKE_URL": str(folder / "lake"),
        "SUPPORTFLOW_GX_ROOT": str(folder / "gx"),
        "SUPPORTFLOW_HANDOFF_DB_URL": f"sqlite:///{folder / 'handoff.db'}",
        "SUPPORTFLOW_KB_DIR": str(folder / "kb"),  # empty: no knowledge base, every question goes to a person
        "SUPPORTFLOW_MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "SUPPORTFLOW_RUN_DIR": str(folder / "run"),
        "SUPPORTFLOW_RASA_URL": f"http://127.0.0.1:{rasa_server.server_address[1]}",
        "SUPPORTFLOW_BOT_URL": f"http://127.0.0.1:{port}",
        "SUPPORTFLOW_BIND_HOST": "127.0.0.1",  # the agent API then serves the local developer, with no agent registered
        "SUPPORTFLOW_INTERNAL_TOKEN": TOKEN,
        "SUPPORTFLOW_FOLLOW_PRODUCTION": "false",
        "SUPPORTFLOW_MODEL_VERSION": "7",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in environment.items():
            patch.setenv(key, value)
        get_settings.cache_clear()
        from bentos.bot.service import BotService

        server = uvicorn.Server(uvicorn.Config(BotService.to_asgi(), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 120
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the bot did not start"
            time.sleep(0.1)
        rasa.bot_url = f"http://127.0.0.1:{port}"
        try:
            yield ServedBot(rasa.bot_url, get_settings(), rasa)
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            rasa_server.shutdown()
            get_settings.cache_clear()


# /internal/answer and /metrics need the internal token.


def test_a_stranger_cannot_open_a_handoff_or_get_answers_through_internal_answer(served_bot: ServedBot) -> None:
    attack = {"kind": "handoff", "conversation_id": "sms:+15550100", "text": "please call me back", "intent": "ask_human"}
    for headers in ({}, {"Authorization": "Bearer guess"}, {"Authorization": f"Bearer {TOKEN[:-1]}"}, {"Authorization": TOKEN}):
        refused = httpx.post(f"{served_bot.url}/internal/answer", json=attack, headers=headers, timeout=10)
        assert refused.status_code == 401 and "internal token" in refused.json()["detail"], headers
    assert served_bot.handoffs() == []
    asked = {"kind": "clarify", "conversation_id": "webchat-1", "text": "hello"}
    allowed = httpx.post(f"{served_bot.url}/internal/answer", json=asked, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert allowed.status_code == 200 and allowed.json()["route"] == "clarify"


def test_a_stranger_cannot_read_the_metrics(served_bot: ServedBot) -> None:
    """BentoML's own /metrics, behind the same door (read with the token in tests/bot/test_stack.py: outside
    `bentoml serve` BentoML's /metrics does not answer)."""
    for headers in ({}, {"Authorization": "Bearer guess"}):
        refused = httpx.get(f"{served_bot.url}/metrics", headers=headers, timeout=10)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert "supportflow_turns_total" not in refused.text


def test_without_a_token_the_internal_routes_are_closed_and_off_loopback_the_bot_refuses_to_start() -> None:
    async def app(scope: dict, receive: object, send: object) -> None:
        raise AssertionError("the request reached the route")

    closed = InternalRoutes(app, Settings(_env_file=None, internal_token=None))  # on one machine, started by hand with no token
    transport = httpx.ASGITransport(app=closed)

    async def attempt() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
            return await client.post("/internal/answer", json={}, headers={"Authorization": "Bearer "})

    refused = asyncio.run(attempt())
    assert refused.status_code == 401 and "no internal token is configured" in refused.json()["detail"]
    with pytest.raises(InternalAuthError, match="required when the services are not all on loopback"):
        InternalRoutes(app, Settings(_env_file=None, internal_token=None, bot_url="http://bot:3000", rasa_url="http://rasa:5005"))


@pytest.mark.parametrize(
    "placeholder", ["CHANGE-ME", "change_me", "replace-me-with-a-real-token", "your-token-here", "short-but-random-9f2"]
)
def test_a_placeholder_or_short_internal_token_is_refused(placeholder: str) -> None:
    with pytest.raises(InternalAuthError, match=r"placeholder|at least 24"):
        internal_token(Settings(_env_file=None, internal_token=SecretStr(placeholder), bot_url="http://bot:3000"))
    assert internal_token(Settings(_env_file=None, internal_token=SecretStr(TOKEN), bot_url="http://bot:3000")) == TOKEN


# Bounds on one caller.


def test_a_huge_body_is_refused_before_it_is_parsed(served_bot: ServedBot) -> None:
    limit = served_bot.settings.max_request_bytes
    declared = httpx.post(f"{served_bot.url}/chat", content=b"{" * (limit + 1), headers={"Content-Type": "application/json"}, timeout=10)
    assert declared.status_code == 413 and f"at most {limit:,}" in declared.json()["detail"]  # not 422: never parsed

    def streamed() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(limit // 1024 + 2):
            yield b"x" * 1024

    chunked = httpx.post(f"{served_bot.url}/chat", content=streamed(), headers={"Content-Type": "application/json"}, timeout=10)
    assert chunked.status_code == 413
    internal = httpx.post(
        f"{served_bot.url}/internal/answer", content=b" " * (limit + 1), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert internal.status_code == 413


def test_made_up_channels_are_refused_and_never_become_metric_labels(served_bot: ServedBot) -> None:
    for number in range(3):  # the route decides the channel: a client naming one is refused before any turn
        refused = httpx.post(f"{served_bot.url}/chat", json={"message": "hi", "channel": f"made-up-{number}"}, timeout=10)
        assert refused.status_code == 422 and "channel" in refused.text
    assert [metrics.channel_label(c) for c in ("webchat", "sms", "whatsapp", "made-up-0")] == ["webchat", "sms", "whatsapp", "unknown"]


def test_a_flood_of_turns_is_turned_away_and_cannot_starve_the_callbacks(served_bot: ServedBot) -> None:
    """The issue's 80 concurrent /chat calls: each holds a thread while Rasa works, and Rasa's action needs one
    more to call back. Past the limit a turn is refused with Retry-After; every turn let in gets its answer."""
    served_bot.rasa.callbacks.clear()

    def turn(number: int) -> httpx.Response:
        return httpx.post(f"{served_bot.url}/chat", json={"message": "where is my card"}, timeout=120)  # each a new conversation

    with ThreadPoolExecutor(max_workers=80) as pool:
        answers = list(pool.map(turn, range(80)))
    refused = [a for a in answers if a.status_code == 503]
    admitted = [a for a in answers if a.status_code == 200]
    assert refused and all(a.headers["retry-after"] == "1" and "try again" in a.json()["detail"] for a in refused)
    assert len(admitted) >= served_bot.settings.max_concurrent_turns
    assert len(refused) + len(admitted) == 80
    assert {a.json()["route"] for a in admitted} == {"clarify"}  # each one's callback ran: no apology, no handoff
    assert served_bot.rasa.callbacks == [200] * len(admitted)


def test_when_the_action_server_cannot_reach_the_bot_a_handoff_is_really_opened(served_bot: ServedBot) -> None:
    answered = httpx.post(f"{served_bot.url}/chat", json={"message": "the action server cannot reach you"}, timeout=30)
    body = answered.json()
    assert (answered.status_code, body["route"]) == (503, "handoff")
    stored = conversation_keys(served_bot.settings).stored_id(body["conversation_id"])
    (handoff,) = [h for h in served_bot.handoffs() if h["conversation_id"] == stored]
    assert handoff["reason"] == "the action server could not reach the bot"


@pytest.fixture
def fast_rasa() -> Iterator[str]:
    """A Rasa whose action answers at once, calling nobody: the bot's own memory and turn log are what is tested."""
    server = serve_json(lambda body: [{"text": "hello"}])
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def small_bot(local_settings: Settings, tmp_path: Path, rasa_url: str, lake: Lake, **bounds: float) -> SupportBot:
    handoffs = HandoffQueue(f"sqlite:///{tmp_path / 'handoff.db'}", lake, load_catalogue(local_settings.catalogue_file).intents)
    turns = TurnLog(lake, flush_every=1).start()
    return SupportBot(None, LLMResponder(local_settings), handoffs, turns, rasa_url=rasa_url, keys=ConversationKeys(b"k" * 32), **bounds)


def test_a_stream_of_new_conversation_ids_cannot_grow_the_bots_memory(local_settings: Settings, tmp_path: Path, fast_rasa: str) -> None:
    bot = small_bot(local_settings, tmp_path, fast_rasa, open_lake(local_settings), conversations_in_memory=20)
    for number in range(60):
        assert bot.chat(f"stranger-{number}", "hello").status == 200
    kept = bot._transcripts  # what the bot holds in memory, by stored id
    assert bot.keys.stored_id("stranger-0") not in kept and bot.keys.stored_id("stranger-59") in kept
    bot.turns.stop()

    transcripts = Transcripts(size=100, ttl_s=0.2)
    transcripts.add("idle", "customer", "hello")
    assert transcripts.of("idle") == [("customer", "hello")]
    time.sleep(0.3)
    assert "idle" not in transcripts and transcripts.of("idle") == []


def test_a_lake_outage_does_not_fail_a_turn_and_its_turns_are_written_once_the_lake_is_back(
    local_settings: Settings, tmp_path: Path, fast_rasa: str
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the lake should be")
    lake = open_lake(local_settings)
    down = Lake(fs=lake.fs, root=str(blocked), url=str(blocked))
    bot = small_bot(local_settings, tmp_path, fast_rasa, down)
    answered = [bot.chat("during-outage", f"message {number}") for number in range(3)]
    assert [a.status for a in answered] == [200, 200, 200] and answered[0].replies[0] == "hello"
    bot.turns.lake = lake  # the lake is back
    bot.turns.stop()
    assert read_turns(lake)["conversation_id"].tolist() == [bot.keys.stored_id("during-outage")] * 3


def test_a_turn_log_kept_through_a_long_outage_is_bounded(local_settings: Settings, tmp_path: Path) -> None:
    from supportflow.bot.turns import Turn

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the lake should be")
    lake = open_lake(local_settings)
    log = TurnLog(Lake(fs=lake.fs, root=str(blocked), url=str(blocked)), flush_every=1000, max_buffered=5)
    for number in range(8):
        log.record(Turn(conversation_id=f"c{number}", channel="webchat", text="hello", route="kb"))
    with pytest.raises(NotADirectoryError):
        log.flush()
    assert log.dropped == 3
    log.lake = lake
    log.flush()
    assert read_turns(lake)["conversation_id"].tolist() == [f"c{number}" for number in range(3, 8)]


# Rasa's side, in Rasa's own environment.


def rasa_environment() -> None:
    if not RASA_PYTHON.exists():
        pytest.fail("Rasa is not installed: `make rasa-venv` (make test does it)")


CLASSIFY_PROBE = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import threading
sent = []
class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["texts"]
        sent.append(texts)
        out = json.dumps([{"intent": "card_arrival", "confidence": 0.9, "ranking": [{"intent": "card_arrival", "confidence": 0.9}]}
                          for _ in texts]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(out))); self.end_headers(); self.wfile.write(out)
    def log_message(self, *args): pass
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
from rasa.shared.nlu.training_data.message import Message
from supportflow_classifier import SupportflowClassifier
component = SupportflowClassifier({**SupportflowClassifier.get_default_config(), "url": f"http://127.0.0.1:{server.server_address[1]}"})
for text in sys.argv[1:]:
    component.process([Message(data={"text": text})])
print(json.dumps(sent))
"""


def test_a_message_of_many_clauses_costs_the_classifier_one_bounded_text(tmp_path: Path) -> None:
    rasa_environment()
    attack = " and ".join(["I want to know where my card is"] * 120)[:4000]  # the 4,000 characters of "and" clauses
    two = "where is my new card and also which exchange rate do you use"
    environment = {**os.environ, "PYTHONPATH": str(RASA_FILES), "TF_CPP_MIN_LOG_LEVEL": "3"}
    environment.pop("SUPPORTFLOW_CLASSIFY_URL", None)
    done = subprocess.run(
        [str(RASA_PYTHON), "-c", CLASSIFY_PROBE, attack, two], env=environment, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    attacked, normal = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(attacked) == 1 and len(attacked[0]) == 1000  # the whole message, cut: no clause texts
    assert normal == [two, "where is my new card", "which exchange rate do you use"]  # two requests are still told apart


ACTION_PROBE = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
from rasa_sdk import Tracker
from rasa_sdk.executor import CollectingDispatcher
from actions import ActionAnswer
events = [{"event": "user", "text": "hi"}, {"event": "bot", "text": "Hello!"}, {"event": "bot", "data": {"custom": {}}}]
events.append({"event": "user", "text": "hello"})
latest = {"text": "hello", "intent": {"name": "greet", "confidence": 1.0}}
tracker = Tracker.from_dict({"sender_id": "c1", "latest_message": latest, "events": events})
dispatcher = CollectingDispatcher()
asyncio.run(ActionAnswer().run(dispatcher, tracker, {}))
print(json.dumps(dispatcher.messages))
"""


def test_an_action_that_cannot_reach_the_bot_marks_its_apology_for_the_bot(tmp_path: Path) -> None:
    rasa_environment()
    environment = {**os.environ, "SUPPORTFLOW_BOT_URL": f"http://127.0.0.1:{free_port()}", "SUPPORTFLOW_INTERNAL_TOKEN": TOKEN}
    done = subprocess.run(
        [str(RASA_PYTHON), "-c", ACTION_PROBE, str(RASA_FILES)], env=environment, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    messages = json.loads(done.stdout.strip().splitlines()[-1])
    assert [m["text"] for m in messages if m.get("text")] == [FALLBACK]
    # the marker the bot's engine looks for, with the tracker's transcript for the handoff it opens
    transcript = [{"role": "customer", "text": "hi"}, {"role": "bot", "text": "Hello!"}, {"role": "customer", "text": "hello"}]
    assert [m["custom"] for m in messages if m.get("custom")] == [{PAYLOAD_KEY: BOT_UNREACHABLE, "transcript": transcript}]


def test_the_action_server_refuses_callers_without_the_token_and_listens_on_loopback_only(tmp_path: Path) -> None:
    rasa_environment()
    from supportflow.dialogue.rasa_cli import action_server

    project = tmp_path / "project"
    (project / "actions").mkdir(parents=True)
    (project / "actions" / "__init__.py").write_text("")
    (project / "actions" / "actions.py").write_text((RASA_FILES / "actions.py").read_text())
    (project / "rasa_sdk_plugins.py").write_text((RASA_FILES / "rasa_sdk_plugins.py").read_text())
    port = free_port()
    settings = Settings(_env_file=None, rasa_venv=ROOT / ".venv-rasa")
    with action_server(settings, project, port, f"http://127.0.0.1:{free_port()}", tmp_path / "actions.log", TOKEN) as server:
        url = f"http://127.0.0.1:{port}"
        call = {"next_action": "action_answer", "sender_id": "sms:+15550100", "tracker": {"sender_id": "sms:+15550100"}, "domain": {}}
        for headers in ({}, {"Authorization": "Bearer guess"}):
            assert httpx.post(f"{url}/webhook", json=call, headers=headers, timeout=10).status_code == 401
            assert httpx.get(f"{url}/actions", headers=headers, timeout=10).status_code == 401
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200  # the probes'
        listed = httpx.get(f"{url}/actions", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert listed.status_code == 200 and {"name": "action_answer"} in listed.json()
        processes = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        listening = {c.laddr.ip for p in processes for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}


def test_the_generated_rasa_project_sends_the_token_to_the_action_server(tmp_path: Path) -> None:
    import yaml

    from tests.dialogue.test_project import ROOT as PROJECT_ROOT
    from tests.dialogue.test_project import build

    project = build(PROJECT_ROOT / "supportflow" / "workspace_skeleton", tmp_path / "project", "skeleton")
    endpoint = yaml.safe_load((project / "endpoints.yml").read_text())["action_endpoint"]
    assert endpoint["headers"] == {"Authorization": "Bearer ${SUPPORTFLOW_INTERNAL_TOKEN}"}
    assert (project / "rasa_sdk_plugins.py").read_text() == (RASA_FILES / "rasa_sdk_plugins.py").read_text()


def test_a_stack_left_running_keeps_its_token_for_its_owner_only(tmp_path: Path) -> None:
    from supportflow.release.stack import Ports, Stack, record_stack, recorded_token, stop_recorded_stack, token_file

    settings = Settings(_env_file=None, run_dir=tmp_path / "run")
    record_stack(settings, Stack(Ports(), [], internal_token=TOKEN))
    assert recorded_token(settings) == TOKEN and token_file(settings).stat().st_mode & 0o777 == 0o600
    assert TOKEN not in (tmp_path / "run" / "stack.json").read_text()  # `supportflow status` shows that file's contents
    stop_recorded_stack(settings)
    assert recorded_token(settings) is None
