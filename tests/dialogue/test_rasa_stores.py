"""Rasa's conversations outlive Rasa: the generated project keeps them in an SQL tracker store (SQLite in the run
folder by default, PostgreSQL at scale, with the conversation locks on Redis), so a Rasa server killed with
SIGKILL and started again continues every open conversation with its slots.

The real Rasa (a trained model of the skeleton desk) and its real action server; the classifier and the bot are
stand-ins that answer what those services would, and the bot's stand-in records what each action sent it.
"""

from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from supportflow.dialogue.rasa_cli import action_server, rasa_server, train_rasa_model
from supportflow.dialogue.stores import DialogueStoreError, store_environment
from supportflow.processes import ManagedProcess, free_port
from supportflow.settings import Settings
from tests.bot.test_internal_doors import serve_json
from tests.dialogue.test_project import DESKS, build
from tests.servers import Postgres

pytestmark = pytest.mark.slow  # a Rasa model is trained (about a minute) and Rasa started four times
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "rasa-stores-test-token-7c4e1a9b3d5f"
OFFERED = ["account_access", "cancellation"]


@dataclass
class StandInBot:
    """The bot's /internal/answer: the first turn of a conversation offers two intents (a slot), later ones answer."""

    asked: list[dict] = field(default_factory=list)

    def answer(self, body: dict) -> dict:
        self.asked.append(body)
        first = len([a for a in self.asked if a["conversation_id"] == body["conversation_id"]]) == 1
        slots = {"offered_intents": OFFERED} if first else {}
        return {"messages": [f"reply {len(self.asked)}"], "slots": slots, "custom": {"supportflow": "outcome", "outcome": {}}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("rasa-stores")
    project = build(DESKS["skeleton"][0], folder / "project", "skeleton")
    return project, train_rasa_model(Settings(_env_file=None, rasa_venv=ROOT / ".venv-rasa"), project)


def classified(body: dict) -> list[dict]:
    """The classifier's answer for every text: account_access, surely."""
    return [{"intent": "account_access", "confidence": 0.99, "ranking": [{"intent": "account_access", "confidence": 0.99}]}] * len(
        body["texts"]
    )


def say(rasa: str, sender: str, text: str) -> list[dict]:
    response = httpx.post(f"{rasa}/webhooks/rest/webhook", json={"sender": sender, "message": text}, timeout=60)
    response.raise_for_status()
    return response.json()


def kill(process: ManagedProcess) -> None:
    """SIGKILL, Rasa and every process under it: nothing is flushed or closed."""
    assert process.pid is not None
    process.kill()


@pytest.mark.parametrize("stores", ["sqlite", "postgresql+redis"])
def test_a_rasa_killed_and_restarted_continues_its_conversations_with_their_slots(
    stores: str, trained: tuple[Path, Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    project, model = trained
    shared: dict[str, object] = {}
    if stores == "postgresql+redis":
        postgres: Postgres = request.getfixturevalue("postgres")
        # Rasa's environment has psycopg2, PostgreSQL's default driver: the plain scheme
        shared = {
            "rasa_tracker_store_url": postgres.new_database().replace("+psycopg", ""),
            "rasa_lock_store_url": request.getfixturevalue("redis_url"),
        }
    settings = Settings(_env_file=None, rasa_venv=ROOT / ".venv-rasa", run_dir=tmp_path / "run", **shared)
    bot, classifier = StandInBot(), serve_json(classified)
    bot_server = serve_json(bot.answer)
    actions_port, rasa_port = free_port(), free_port()
    rasa_url = f"http://127.0.0.1:{rasa_port}"

    def start_rasa() -> ManagedProcess:
        classify = f"http://127.0.0.1:{classifier.server_address[1]}/classify"
        webhook = f"http://127.0.0.1:{actions_port}/webhook"
        return rasa_server(settings, project, model, rasa_port, classify, webhook, tmp_path / "rasa.log", TOKEN).start(timeout=300)

    bot_url = f"http://127.0.0.1:{bot_server.server_address[1]}"
    try:
        with action_server(settings, project, actions_port, bot_url, tmp_path / "actions.log", TOKEN):
            rasa = start_rasa()
            try:
                assert say(rasa_url, "c-1", "I cannot sign in to my account")[0]["text"] == "reply 1"
                say(rasa_url, "c-2", "my account is locked")  # a second open conversation
                kill(rasa)
                rasa = start_rasa()
                assert say(rasa_url, "c-1", "still locked out of my account")[0]["text"] == "reply 3"
                tracker = httpx.get(f"{rasa_url}/conversations/c-1/tracker", params={"token": TOKEN}, timeout=30).json()
            finally:
                rasa.stop()
    finally:
        bot_server.shutdown()
        classifier.shutdown()

    continued = bot.asked[-1]  # what the action sent after the restart: the slot the first turn set, and the whole transcript
    assert continued["conversation_id"] == "c-1" and continued["slots"]["offered_intents"] == OFFERED
    first, later = "I cannot sign in to my account", "still locked out of my account"
    assert [line["text"] for line in continued["transcript"]] == [first, "reply 1", later]
    assert tracker["slots"]["offered_intents"] == OFFERED
    assert [e["text"] for e in tracker["events"] if e["event"] == "user"] == [first, later]
    if stores == "sqlite":
        assert (tmp_path / "run" / "rasa-trackers.db").stat().st_size > 0  # the default: a file in the run folder


def test_the_generated_endpoints_name_the_stores_through_the_environment(tmp_path: Path) -> None:
    project = build(DESKS["skeleton"][0], tmp_path / "project", "skeleton")
    endpoints = yaml.safe_load((project / "endpoints.yml").read_text())
    assert endpoints["tracker_store"] == {"type": "SQL", "url": "${SUPPORTFLOW_RASA_TRACKER_STORE_URL}"}
    assert endpoints["lock_store"]["type"] == "${SUPPORTFLOW_RASA_LOCK_STORE}"

    local = store_environment(Settings(_env_file=None, run_dir=tmp_path / "run"))
    assert local["SUPPORTFLOW_RASA_TRACKER_STORE_URL"] == f"sqlite:///{(tmp_path / 'run' / 'rasa-trackers.db').resolve()}"
    assert local["SUPPORTFLOW_RASA_LOCK_STORE"] == "in_memory"
    scaled = store_environment(
        Settings(
            _env_file=None, rasa_tracker_store_url="postgresql://rasa:pw@db:5432/rasa", rasa_lock_store_url="redis://:s%40cret@cache:6380/2"
        )
    )
    assert scaled == {
        "SUPPORTFLOW_RASA_TRACKER_STORE_URL": "postgresql://rasa:pw@db:5432/rasa",
        "SUPPORTFLOW_RASA_LOCK_STORE": "redis",
        "SUPPORTFLOW_RASA_LOCK_STORE_HOST": "cache",
        "SUPPORTFLOW_RASA_LOCK_STORE_PORT": "6380",
        "SUPPORTFLOW_RASA_LOCK_STORE_DB": "2",
        "SUPPORTFLOW_RASA_LOCK_STORE_PASSWORD": "s@cret",
    }


@pytest.mark.parametrize(
    ("setting", "value", "reason"),
    [
        ("rasa_tracker_store_url", "postgresql+psycopg://db/rasa", "the drivers Rasa's environment has"),
        ("rasa_tracker_store_url", "mysql://db/rasa", "it starts with 'mysql'"),
        ("rasa_lock_store_url", "rediss://cache:6380/1", "no TLS setting"),
        ("rasa_lock_store_url", "redis://cache/locks", "database number"),
    ],
)
def test_a_store_rasa_could_not_use_is_refused_with_the_reason(setting: str, value: str, reason: str) -> None:
    with pytest.raises(DialogueStoreError, match=reason):
        store_environment(Settings(_env_file=None, **{setting: value}))
