"""Two bot replicas, two Rasa servers and their action servers behind HAProxy round-robin, on shared stores
(PostgreSQL for the handoff queue and Rasa's trackers, Redis for Rasa's locks, one lake): conversations with
slots cross replicas and stay coherent, and after `kill -9` of one bot and one Rasa every conversation goes on
with its slots on the survivors, while the turn log and the handoff queue hold every turn that got a reply.

Slow: a desk is trained and seven services are started for the module.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pandas as pd
import pytest

from supportflow.processes import descendants, gone
from tests.bot.conftest import prepared_desk, surest_example
from tests.servers import Postgres

pytestmark = pytest.mark.slow
CARD_QUESTION = "Is this about your physical card or a virtual card?"  # the demo desk's form asks it for change_pin


@dataclass
class Replicated:
    stack: object
    settings: object
    rows: pd.DataFrame
    conversations: dict[str, tuple[str, str]] = field(default_factory=dict)
    replied: dict[str, int] = field(default_factory=dict)  # a test's conversation name -> turns that got a reply

    def chat(self, conversation: str, message: str) -> dict:
        if conversation in self.conversations:
            known, token = self.conversations[conversation]
            body, headers = {"conversation_id": known, "message": message}, {"X-Conversation-Token": token}
        else:
            body, headers = {"message": message}, {}
        response = httpx.post(f"{self.stack.bot_url}/chat", json=body, headers=headers, timeout=60)
        assert response.status_code == 200, (conversation, response.status_code, response.text[:300])
        reply = response.json()
        if "conversation_token" in reply:
            self.conversations[conversation] = (reply["conversation_id"], reply["conversation_token"])
        self.replied[conversation] = self.replied.get(conversation, 0) + 1
        return reply

    def example(self, intent: str) -> str:
        address = urlsplit(self.stack.classifier.health_url)
        return surest_example(
            f"{address.scheme}://{address.netloc}", self.rows.loc[self.rows["category"] == intent, "text"].tolist(), intent
        )

    def turns_served(self, port: int) -> float:
        """The bot replica's own count of turns, read from its /metrics (behind the internal token)."""
        headers = {"Authorization": f"Bearer {self.stack.internal_token}"}
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("supportflow_turns_total{"))


@pytest.fixture(scope="module")
def replicated(
    tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, prefect_harness: None, postgres: Postgres, redis_url: str
) -> Iterator[Replicated]:
    from supportflow.release.replicas import start_replicas

    folder = tmp_path_factory.mktemp("replicas")
    stores = {
        "SUPPORTFLOW_HANDOFF_DB_URL": postgres.new_database(),
        "SUPPORTFLOW_RASA_TRACKER_STORE_URL": postgres.new_database().replace("+psycopg", ""),  # Rasa has psycopg2
        "SUPPORTFLOW_RASA_LOCK_STORE_URL": redis_url,
    }
    with prepared_desk(folder, tiny_base, **stores) as desk:
        stack = start_replicas(desk.settings, desk.rasa_project, desk.rasa_model, folder / "replicas", count=2)
        try:
            yield Replicated(stack, desk.settings, desk.rows)
        finally:
            stack.stop()


def test_conversations_with_slots_cross_replicas_and_stay_coherent(replicated: Replicated) -> None:
    for name in ("cross-1", "cross-2", "cross-3"):
        asked = replicated.chat(name, replicated.example("change_pin"))
        assert (asked["route"], asked["replies"]) == ("dialogue", [CARD_QUESTION]), asked
        answered = replicated.chat(name, "the virtual one")  # round-robin: the other replica takes this turn
        assert (answered["route"], answered["intent"]) == ("kb", "change_pin"), answered
    served = [replicated.turns_served(replica.bot_port) for replica in replicated.stack.replicas]
    assert all(count > 0 for count in served), f"a replica took no turn: {served}"


def test_killing_a_bot_and_a_rasa_loses_no_conversation_turn_or_handoff(replicated: Replicated) -> None:
    from supportflow.bot.turns import read_turns
    from supportflow.keys import conversation_keys
    from supportflow.lake import open_lake

    pending = [f"killed-{index}" for index in range(4)]
    for name in pending:  # each waits for its card type when the kills land
        assert replicated.chat(name, replicated.example("change_pin"))["replies"] == [CARD_QUESTION]
    replicated.chat("handed-before", "I want to talk to a human")

    doomed_bot, doomed_rasa = replicated.stack.replicas[0].bot, replicated.stack.replicas[1].rasa
    workers = descendants(doomed_bot.pid)  # BentoML's, each in a session of its own
    assert workers
    for process in (doomed_bot, doomed_rasa):
        process.kill()
    assert all(gone(worker) for worker in workers)  # no orphan goes on serving the killed bot's port

    for name in pending:  # the form goes on where it stopped: the slot it asked for, then the answer
        answered = replicated.chat(name, "the virtual one")
        assert (answered["route"], answered["intent"]) == ("kb", "change_pin"), (name, answered)
    replicated.chat("handed-after", "I want to talk to a human")
    fresh = replicated.chat("fresh-after", replicated.example("change_pin"))
    assert fresh["replies"] == [CARD_QUESTION]

    keys = conversation_keys(replicated.settings)
    stored = {name: keys.stored_id(conversation) for name, (conversation, _) in replicated.conversations.items()}
    listed = httpx.get(f"{replicated.stack.bot_url}/agent/handoffs", params={"limit": 100}, timeout=30).json()["handoffs"]
    assert {stored["handed-before"], stored["handed-after"]} <= {handoff["conversation_id"] for handoff in listed}

    doomed_bot.start(timeout=300)  # restarted, as Kubernetes restarts a killed pod: its write-ahead turns replay
    for replica in replicated.stack.replicas:
        replica.bot.stop()  # the survivors flush what they hold
    deadline, counts = time.monotonic() + 60, pd.Series(dtype=int)
    while time.monotonic() < deadline:
        counts = read_turns(open_lake(replicated.settings))["conversation_id"].value_counts()
        if all(counts.get(stored[name], 0) >= replied for name, replied in replicated.replied.items()):
            break
        time.sleep(1)
    missing = {
        name: (replied, int(counts.get(stored[name], 0)))
        for name, replied in replicated.replied.items()
        if counts.get(stored[name], 0) < replied
    }
    assert not missing, f"turns that got a reply but are not in the turn log (replied, logged): {missing}"
    duplicated = {name: int(counts[stored[name]]) for name, replied in replicated.replied.items() if counts.get(stored[name], 0) > replied}
    assert not duplicated, f"turns logged twice: {duplicated}"
