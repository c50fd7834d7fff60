"""A message outside every intent is routed like low confidence, without offers: from the classifier's `out_of_scope`
through Rasa's component and action to the bot's decision."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from supportflow.bot.engine import AnswerRequest, SupportBot
from supportflow.bot.handoff import HandoffQueue
from supportflow.bot.llm import LLMResponder
from supportflow.bot.turns import TurnLog
from supportflow.keys import ConversationKeys
from supportflow.lake import open_lake
from supportflow.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
RASA_FILES = ROOT / "supportflow" / "dialogue" / "rasa_files"
RASA_PYTHON = ROOT / ".venv-rasa" / "bin" / "python"
PIZZA = "which pizza topping goes best with pineapple?"
UNSURE = [  # what Rasa would send below the threshold for an in-scope message: offers are worth making
    {"intent": "nlu_fallback", "confidence": 0.9},
    {"intent": "card_arrival", "confidence": 0.45},
    {"intent": "card_delivery_estimate", "confidence": 0.35},
]


class Articles:
    """Two intents the knowledge base answers; the routing under test never searches it."""

    def __init__(self) -> None:
        self.answered_intents = frozenset({"card_arrival", "card_delivery_estimate"})
        self.intent_titles = {"card_arrival": "My card has not arrived", "card_delivery_estimate": "How long does a card take?"}

    def reply(self, question: str, k: int = 3) -> object:
        raise AssertionError("a message the bot hands off is not searched")

    def article_for(self, intent: str, question: str) -> object:
        raise AssertionError("a message the bot hands off is not answered")


@pytest.fixture
def bot(local_settings: Settings, tmp_path: Path) -> SupportBot:
    lake = open_lake(local_settings)
    return SupportBot(
        Articles(),
        LLMResponder(local_settings),
        HandoffQueue(f"sqlite:///{tmp_path / 'handoff.db'}", lake, ("card_arrival", "card_delivery_estimate")),
        TurnLog(lake, flush_every=1),
        rasa_url="http://127.0.0.1:9",
        keys=ConversationKeys(b"a test key of thirty-two bytes.."),
    )


def test_an_out_of_scope_message_is_handed_off_and_offered_nothing(bot: SupportBot) -> None:
    def ask(conversation: str, out_of_scope: bool) -> object:
        request = AnswerRequest(
            kind="handoff", conversation_id=conversation, text=PIZZA, intent="nlu_fallback", confidence=0.9, ranking=UNSURE
        )
        return bot.answer(request.model_copy(update={"out_of_scope": out_of_scope}))

    unsure = ask("c-unsure", out_of_scope=False)
    assert unsure.route == "clarify" and unsure.slots == {"offered_intents": ["card_arrival", "card_delivery_estimate"]}
    unknown = ask("c-unknown", out_of_scope=True)  # the same ranking, but the detector says no intent fits
    assert unknown.route == "handoff" and "offered_intents" not in unknown.slots
    assert "(1)" not in unknown.messages[0] and "card" not in unknown.messages[0].lower()
    (handoff,) = bot.handoffs.page().handoffs
    assert handoff["reason"] == "outside every intent the classifier knows"
    assert [s["intent"] for s in handoff["suggestions"]] == ["card_arrival", "card_delivery_estimate"]  # the agent's hint


COMPONENT_PROBE = """
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
PIZZA = sys.argv[1]
class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["texts"]
        ranking = [{"intent": "card_arrival", "confidence": 0.95}, {"intent": "change_pin", "confidence": 0.05}]
        out = json.dumps([{"intent": "card_arrival", "confidence": 0.95, "ranking": ranking, "out_of_scope": t == PIZZA,
                           "ood_score": 40.0 if t == PIZZA else 3.0} for t in texts]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(out))); self.end_headers(); self.wfile.write(out)
    def log_message(self, *args): pass
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
from rasa.shared.nlu.training_data.message import Message
from supportflow_classifier import SupportflowClassifier
component = SupportflowClassifier({**SupportflowClassifier.get_default_config(), "url": f"http://127.0.0.1:{server.server_address[1]}"})
seen = []
for text in sys.argv[1:]:
    message = Message(data={"text": text})
    component.process([message])
    seen.append({"intent": message.get("intent"), "ranking": message.get("intent_ranking"), "out_of_scope": message.get("out_of_scope")})
print(json.dumps(seen))
"""


def test_rasa_s_component_turns_out_of_scope_into_a_fallback_that_keeps_its_ranking_for_the_agent(tmp_path: Path) -> None:
    if not RASA_PYTHON.exists():
        pytest.fail("Rasa is not installed: `make rasa-venv` (make test does it)")
    environment = {**os.environ, "PYTHONPATH": str(RASA_FILES), "TF_CPP_MIN_LOG_LEVEL": "3"}
    environment.pop("SUPPORTFLOW_CLASSIFY_URL", None)
    done = subprocess.run(
        [str(RASA_PYTHON), "-c", COMPONENT_PROBE, PIZZA, "where is my card"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pizza, card = json.loads(done.stdout.strip().splitlines()[-1])
    # Confident, yet outside every intent: a fallback carrying the classifier's confidence, its ranking kept as the
    # agent's suggestions (the bot offers none of them: test_an_out_of_scope_message_is_handed_off_and_offered_nothing).
    assert (pizza["intent"], pizza["out_of_scope"]) == ({"name": "nlu_fallback", "confidence": 0.95}, True)
    assert [r["name"] for r in pizza["ranking"]] == ["card_arrival", "change_pin"]
    assert card["intent"] == {"name": "card_arrival", "confidence": 0.95} and card["out_of_scope"] is None
    assert [r["name"] for r in card["ranking"]] == ["card_arrival", "change_pin"]


ACTION_PROBE = """
import asyncio, json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
received = []
class Bot(BaseHTTPRequestHandler):
    def do_POST(self):
        received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        out = json.dumps({"messages": ["a colleague will help"], "slots": {}}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out))); self.end_headers(); self.wfile.write(out)
    def log_message(self, *args): pass
server = ThreadingHTTPServer(("127.0.0.1", 0), Bot)
threading.Thread(target=server.serve_forever, daemon=True).start()
import os
os.environ["SUPPORTFLOW_BOT_URL"] = f"http://127.0.0.1:{server.server_address[1]}"
sys.path.insert(0, sys.argv[1])
from rasa_sdk import Tracker
from rasa_sdk.executor import CollectingDispatcher
from actions import ActionHandoff
latest = {"text": sys.argv[2], "intent": {"name": "nlu_fallback", "confidence": 0.95}, "intent_ranking": [], "out_of_scope": True}
tracker = Tracker.from_dict({"sender_id": "c1", "latest_message": latest})
asyncio.run(ActionHandoff().run(CollectingDispatcher(), tracker, {}))
print(json.dumps(received))
"""


def test_rasa_s_action_forwards_out_of_scope_to_the_bot(tmp_path: Path) -> None:
    if not RASA_PYTHON.exists():
        pytest.fail("Rasa is not installed: `make rasa-venv` (make test does it)")
    environment = {**os.environ, "SUPPORTFLOW_INTERNAL_TOKEN": "k3P9-internal-token-for-the-routing-test-0b1f"}
    done = subprocess.run(
        [str(RASA_PYTHON), "-c", ACTION_PROBE, str(RASA_FILES), PIZZA],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (payload,) = json.loads(done.stdout.strip().splitlines()[-1])
    assert (payload["kind"], payload["intent"], payload["out_of_scope"], payload["ranking"]) == ("handoff", "nlu_fallback", True, [])
    assert AnswerRequest(**payload).out_of_scope  # what the bot's /internal/answer parses
