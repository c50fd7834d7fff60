"""Security doors of the served bot (issue 13): each test sends what an attacker would send and checks it is refused.

The bot service runs in this process (its real FastAPI routes, `BentoML`'s service instance bound through
FastAPI's dependency override), on temporary stores. Rasa is not running, so every first message is handed off
to a person ("the dialogue service was unavailable"): the path a conversation takeover goes after.

Sections: conversations belong to their customer (item 1); agents authenticate (item 3).
"""

import io
import json
import logging
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator

from supportflow.bot.agents import AgentError, Agents
from supportflow.bot.handoff import Handoff, HandoffQueue
from supportflow.bot.turns import read_turns
from supportflow.keys import SecretKeyError, conversation_keys, key_file, server_key
from supportflow.lake import open_lake
from supportflow.logs import JsonFormatter
from supportflow.processes import free_port
from supportflow.settings import Settings, get_settings
from supportflow.validate.catalogue import load_catalogue

TWILIO_TOKEN = "0123456789abcdef0123456789abcdef"
TWILIO_URL = "https://bot.example.com/twilio"
SECRET_KEY = "test-key-6f1d0c8e4b2a4e0f9d7c5b3a1e9f7d5c"
PHONE = "+15550001111"


@dataclass
class ServedBot:
    """The bot service on temporary stores, and what a test needs to speak to it as each party."""

    client: object  # fastapi.testclient.TestClient
    instance: object  # the BotService instance
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)  # agent name -> bearer token

    def twilio(self, sender: str, text: str) -> httpx.Response:
        form = {"From": sender, "Body": text, "NumMedia": "0", "MessageSid": "SM1"}
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(TWILIO_URL, form)
        return self.client.post("/twilio", data=form, headers={"X-Twilio-Signature": signature})

    def as_agent(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def start_webchat(self, message: str) -> tuple[str, str]:
        body = self.client.post("/chat", json={"message": message}).json()
        return body["conversation_id"], body["conversation_token"]


def bot_environment(folder: Path, monkeypatch: pytest.MonkeyPatch, **overrides: str) -> None:
    for name in ("AGENT_TOKEN", "SECRET_KEY", "BIND_HOST", "TWILIO_AUTH_TOKEN"):
        monkeypatch.delenv(f"SUPPORTFLOW_{name}", raising=False)
    values = {
        "LAKE_URL": str(folder / "lake"),
        "HANDOFF_DB_URL": f"sqlite:///{folder / 'handoff.db'}",
        "RUN_DIR": str(folder / "run"),
        "KB_DIR": str(folder / "kb"),  # empty: no knowledge base, every question goes to a person
        "GX_ROOT": str(folder / "gx"),
        "BENTOML_HOME": str(folder / "bentoml"),
        "RASA_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens: Rasa is down
        "FOLLOW_PRODUCTION": "false",
        "MODEL_VERSION": "test",
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_WEBHOOK_URL": TWILIO_URL,
        "SECRET_KEY": SECRET_KEY,
        "BIND_HOST": "0.0.0.0",
        **overrides,
    }
    for name, value in values.items():
        monkeypatch.setenv(f"SUPPORTFLOW_{name}", value)
    get_settings.cache_clear()


def start_bot() -> tuple[object, object]:
    import bentoml
    from fastapi.testclient import TestClient

    from bentos.bot import service

    instance = service.BotService.inner()
    service.web.dependency_overrides[bentoml.get_current_service] = lambda: instance
    return TestClient(service.web), instance


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServedBot]:
    """Bound to every interface, as in production, with two registered agents."""
    bot_environment(tmp_path, monkeypatch)
    settings = get_settings()
    agents = Agents(settings.handoff_db_url)
    tokens = {name: agents.add(name) for name in ("ann", "bo")}
    client, instance = start_bot()
    try:
        yield ServedBot(client, instance, settings, tokens)
    finally:
        instance.flush_turns()
        get_settings.cache_clear()


# Conversations belong to their customer (issue 13, item 1).


def test_a_stranger_cannot_read_an_sms_customers_agent_replies(served: ServedBot) -> None:
    assert "colleague" in served.twilio(PHONE, "my card was stolen").text  # handed off: Rasa is down
    (handoff,) = served.client.get("/agent/handoffs", headers=served.as_agent("ann")).json()["handoffs"]
    claimed = served.client.post(f"/agent/handoffs/{handoff['id']}/claim", headers=served.as_agent("ann"))  # nothing to send
    assert (claimed.status_code, claimed.json()["agent"]) == (200, "ann"), claimed.text
    served.client.post(f"/agent/handoffs/{handoff['id']}/answer", json={"text": "We blocked it."}, headers=served.as_agent("ann"))

    for conversation in (f"sms:{PHONE}", f"sms:+{PHONE.lstrip('+')}", handoff["conversation_id"]):
        stolen = served.client.get(f"/chat/{conversation}/replies")
        assert stolen.status_code == 403 and "We blocked it." not in stolen.text
    _, web_token = served.start_webchat("hello")  # a token of the attacker's own conversation opens no other
    borrowed = served.client.get(f"/chat/sms:{PHONE}/replies", headers={"X-Conversation-Token": web_token})
    assert borrowed.status_code == 403

    # the agent's reply was not marked delivered by those attempts: the customer gets it on their next message
    assert "We blocked it." in served.twilio(PHONE, "thanks, anything else?").text


def test_a_stranger_cannot_write_into_an_sms_conversation(served: ServedBot) -> None:
    served.twilio(PHONE, "my card was stolen")
    for body in (
        {"conversation_id": f"sms:{PHONE}", "message": "send the new card to 1 Thief Road"},
        {"conversation_id": f"whatsapp:{PHONE}", "message": "send the new card to 1 Thief Road"},
        {"message": "send the new card to 1 Thief Road", "channel": "sms"},
    ):
        assert served.client.post("/chat", json=body).status_code in (403, 422), body
    (handoff,) = served.client.get("/agent/handoffs", headers=served.as_agent("ann")).json()["handoffs"]
    assert [m["text"] for m in handoff["transcript"]] == ["my card was stolen"]


def test_no_answer_tells_whether_a_number_talks_to_the_desk(served: ServedBot) -> None:
    served.twilio(PHONE, "my card was stolen")
    web_id, _ = served.start_webchat("hello")
    strangers = [f"sms:{PHONE}", "sms:+15559999999", web_id, "web-never-issued", "bad id with spaces"]
    posted = {
        (r.status_code, r.text) for r in (served.client.post("/chat", json={"conversation_id": c, "message": "hi"}) for c in strangers)
    }
    polled = {
        (r.status_code, r.text)
        for r in (served.client.get(f"/chat/{c}/replies", headers={"X-Conversation-Token": "guess"}) for c in strangers)
    }
    assert len(posted) == 1 and len(polled) == 1 and posted == polled
    assert next(iter(posted))[0] == 403


def test_a_webchat_conversation_answers_only_the_holder_of_its_token(served: ServedBot) -> None:
    first = served.client.post("/chat", json={"message": "hello"})
    body = first.json()
    conversation, token = body["conversation_id"], body["conversation_token"]
    assert conversation.startswith("web-") and len(conversation) >= 24 and len(token) >= 40
    other, _ = served.start_webchat("hello too")
    assert other != conversation

    mine = {"X-Conversation-Token": token}
    again = served.client.post("/chat", json={"conversation_id": conversation, "message": "still there?"}, headers=mine)
    assert (again.status_code, again.json()["route"], again.json()["conversation_id"]) == (200, "handoff", conversation)
    assert served.client.get(f"/chat/{conversation}/replies", headers=mine).json() == {"conversation_id": conversation, "replies": []}
    assert served.client.post("/chat", json={"conversation_id": conversation, "message": "hijack"}).status_code == 403
    assert served.client.post("/chat", json={"conversation_id": other, "message": "hijack"}, headers=mine).status_code == 403
    assert served.client.get(f"/chat/{other}/replies", headers=mine).status_code == 403
    assert "conversation_token" not in served.client.post("/chat", json={"message": ""}).json()  # refused: no conversation


def test_the_channel_is_the_servers_not_the_clients(served: ServedBot) -> None:
    refused = served.client.post("/chat", json={"message": "hi", "channel": "whatsapp"})
    assert refused.status_code == 422 and "channel" in refused.text
    served.start_webchat("hello")
    served.twilio(PHONE, "hello from my phone")
    served.instance.bot.turns.flush()
    turns = read_turns(open_lake(served.settings))
    assert sorted(turns["channel"]) == ["sms", "webchat"]


def test_conversation_ids_are_stored_and_logged_as_keyed_hashes(served: ServedBot) -> None:
    logged = io.StringIO()
    handler = logging.StreamHandler(logged)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("supportflow").addHandler(handler)
    try:
        web_id, _ = served.start_webchat("hello")
        served.twilio(PHONE, "my card was stolen")
        served.twilio(PHONE, "hello?")
    finally:
        logging.getLogger("supportflow").removeHandler(handler)
    served.instance.bot.turns.flush()
    keys = conversation_keys(served.settings)
    stored = keys.stored_id(f"sms:{PHONE}")
    assert stored != keys.stored_id(f"whatsapp:{PHONE}") and stored.startswith("c-")

    turns = read_turns(open_lake(served.settings))
    assert set(turns["conversation_id"]) == {stored, keys.stored_id(web_id)}  # the same phone: the same stored id
    records = [json.loads(line) for line in logged.getvalue().splitlines()]
    assert {r["conversation_id"] for r in records if "conversation_id" in r} == {stored, keys.stored_id(web_id)}
    listing = served.client.get("/agent/handoffs", headers=served.as_agent("ann")).json()
    assert [h["conversation_id"] for h in listing["handoffs"]] == [keys.stored_id(web_id), stored]
    database = Path(served.settings.handoff_db_url.removeprefix("sqlite:///")).read_bytes()
    for trace in (PHONE, PHONE.lstrip("+"), web_id):
        assert trace not in logged.getvalue() and trace not in database.decode("latin-1") and trace not in turns.to_csv()
    # another key, other stored ids: the hash cannot be recomputed from the phone number alone
    assert conversation_keys(served.settings.model_copy(update={"secret_key": None})).stored_id(f"sms:{PHONE}") != stored


def test_a_placeholder_or_short_secret_key_stops_the_bot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, reason in (("CHANGE-ME", "placeholder"), ("", "empty"), ("0123456789", "10 characters long")):
        bot_environment(tmp_path, monkeypatch, SECRET_KEY=key, BIND_HOST="127.0.0.1")
        with pytest.raises(SecretKeyError, match=f"SUPPORTFLOW_SECRET_KEY is (a |an )?{reason}"):
            start_bot()
    bot_environment(tmp_path, monkeypatch, TWILIO_AUTH_TOKEN="CHANGE-ME", BIND_HOST="127.0.0.1")
    with pytest.raises(SecretKeyError, match="SUPPORTFLOW_TWILIO_AUTH_TOKEN is a placeholder"):
        start_bot()  # a known Twilio token would let anyone sign as Twilio, and so speak for any phone


def test_an_unset_key_is_generated_once_kept_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path / "run", _env_file=None)
    assert settings.secret_key is None
    first = server_key(settings)
    path = key_file(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) >= 32
    assert server_key(settings) == first  # a restart: the same key, so stored ids and tokens still hold
    assert server_key(Settings(run_dir=tmp_path / "other", _env_file=None)) != first
    path.chmod(0o644)
    with pytest.raises(SecretKeyError, match="can be read by other users"):
        server_key(settings)


# Agents authenticate (issue 13, item 3).


def test_the_agent_api_refuses_callers_without_an_agents_token(served: ServedBot) -> None:
    served.twilio(PHONE, "my card was stolen")
    for headers in (
        {},
        {"Authorization": "Bearer CHANGE-ME"},
        {"Authorization": f"Bearer {served.tokens['ann']}x"},
        {"Authorization": served.tokens["ann"]},
    ):
        listing = served.client.get("/agent/handoffs", headers=headers)
        assert listing.status_code == 401 and listing.headers["www-authenticate"] == "Bearer" and "transcript" not in listing.text
        assert served.client.post("/agent/handoffs/1/claim", json={}, headers=headers).status_code == 401
    (handoff,) = served.client.get("/agent/handoffs", headers=served.as_agent("ann")).json()["handoffs"]
    assert handoff["status"] == "waiting" and handoff["agent"] is None  # nothing the strangers sent took effect


def test_a_stranger_cannot_write_training_labels(served: ServedBot) -> None:
    served.twilio(PHONE, "my card was stolen")
    for action, body in (("claim", {}), ("resolve", {"intent": "card_arrival"})):
        assert served.client.post(f"/agent/handoffs/1/{action}", json=body).status_code == 401
    lake = open_lake(served.settings)
    assert not [path for path in lake.files("tickets") if "agent_label-" in path]


def test_an_agent_is_who_their_token_says(served: ServedBot) -> None:
    served.twilio(PHONE, "my card was stolen")
    named = served.client.post("/agent/handoffs/1/claim", json={"agent": "bo"}, headers=served.as_agent("ann"))
    assert named.status_code == 422 and "agent" in named.text  # the body names no one
    claimed = served.client.post("/agent/handoffs/1/claim", json={}, headers=served.as_agent("ann")).json()
    assert claimed["agent"] == "ann"
    as_ann = served.client.post("/agent/handoffs/1/answer", json={"text": "Bo here, pretending"}, headers=served.as_agent("bo"))
    assert as_ann.status_code == 409 and "not claimed by bo" in as_ann.json()["detail"]
    assert (
        served.client.post("/agent/handoffs/1/resolve", json={"intent": "card_arrival"}, headers=served.as_agent("bo")).status_code == 409
    )
    Agents(served.settings.handoff_db_url).remove("ann")  # a removed agent's token stops working at once
    assert served.client.get("/agent/handoffs", headers=served.as_agent("ann")).status_code == 401


def test_an_exposed_bot_will_not_start_without_agents_or_with_the_retired_shared_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot_environment(tmp_path, monkeypatch)  # bound to 0.0.0.0, no agent registered
    with pytest.raises(AgentError, match=r"open to anyone \(SUPPORTFLOW_BIND_HOST=0.0.0.0\) and no agent is registered"):
        start_bot()
    bot_environment(tmp_path, monkeypatch, BIND_HOST="")  # not told where it is bound: assumed exposed
    monkeypatch.delenv("SUPPORTFLOW_BIND_HOST")
    get_settings.cache_clear()
    with pytest.raises(AgentError, match="SUPPORTFLOW_BIND_HOST is unset"):
        start_bot()
    bot_environment(tmp_path, monkeypatch, BIND_HOST="127.0.0.1", AGENT_TOKEN="a-shared-token-everyone-knows-0123456789")
    with pytest.raises(AgentError, match="SUPPORTFLOW_AGENT_TOKEN is retired"):
        start_bot()


def test_on_loopback_with_no_agents_the_local_developer_uses_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bot_environment(tmp_path, monkeypatch, BIND_HOST="127.0.0.1")
    client, instance = start_bot()
    try:
        client.post("/chat", json={"message": "I want a person"})
        assert client.post("/agent/handoffs/1/claim", json={}).json()["agent"] == "local"
        token = Agents(get_settings().handoff_db_url).add("ann")  # once an agent exists, loopback asks for tokens too
        assert client.get("/agent/handoffs").status_code == 401
        assert client.get("/agent/handoffs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        instance.flush_turns()
        get_settings.cache_clear()


def test_listings_are_paged_with_a_capped_page_size(served: ServedBot) -> None:
    for number in range(5):
        served.twilio(f"+1555000200{number}", "my card was stolen")
    ann = served.as_agent("ann")
    assert served.client.get("/agent/handoffs", params={"limit": 1000}, headers=ann).status_code == 422
    first = served.client.get("/agent/handoffs", params={"limit": 2}, headers=ann).json()
    last = served.client.get("/agent/handoffs", params={"limit": 2, "offset": 4}, headers=ann).json()
    assert (len(first["handoffs"]), first["next_offset"]) == (2, 2) and (len(last["handoffs"]), last["next_offset"]) == (1, None)
    seen = [
        h["id"]
        for offset in (0, 2, 4)
        for h in served.client.get("/agent/handoffs", params={"limit": 2, "offset": offset}, headers=ann).json()["handoffs"]
    ]
    assert seen == [1, 2, 3, 4, 5]
    assert served.client.get("/agent/handoffs", params={"status": "everything"}, headers=ann).status_code == 422


def test_resolved_transcripts_are_deleted_after_the_retention_period(local_settings: Settings, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'handoff.db'}"
    queue = HandoffQueue(url, open_lake(local_settings), load_catalogue(local_settings.catalogue_file).intents, timedelta(days=30))
    old, recent, waiting = (queue.enqueue(f"c-{n}", "sms", [("customer", f"message {n}")], "asked for a person", None) for n in range(3))
    for handoff in (old, recent):
        queue.claim(handoff, "ann")
        queue.resolve(handoff, "ann", None)
    with Session(queue.engine) as session:
        long_ago = datetime.now(UTC) - timedelta(days=31)
        session.execute(update(Handoff).where(Handoff.id.in_([old, waiting])).values(updated_at=long_ago))
        session.commit()
    assert [h["id"] for h in queue.page().handoffs] == [recent, waiting]  # an old open handoff still waits for a person
    assert "message 0" not in (tmp_path / "handoff.db").read_bytes().decode("latin-1")
