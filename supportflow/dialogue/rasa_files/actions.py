"""Custom actions (rasa-sdk): thin calls to the supportflow bot, where the routing logic lives.

Runs in Rasa's Python 3.10 environment. Every action forwards the turn (text, intent, ranking, slots,
request id, and the conversation's last messages from the tracker) to the bot's `/internal/answer` and utters
what comes back, so answers from the knowledge base, LLM replies, clarifications and handoffs are all decided
(and tested) in the project itself. The callback may reach another bot replica than the one whose turn waits on
Rasa: the answer's outcome goes back to that turn as a custom payload uttered after the messages (`custom` in
the answer), and a handoff gets its transcript from this request, so no bot process needs another's memory.

`/internal/answer` needs the internal token (SUPPORTFLOW_INTERNAL_TOKEN). When the bot cannot be reached, the
action apologises and utters the BOT_UNREACHABLE marker with the transcript: the bot (supportflow/bot/engine.py,
which holds the same values) then opens the handoff the apology promises.
"""

import logging
import os
from typing import Any, Dict, List, Text

import aiohttp
from rasa_sdk import Action, Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher

log = logging.getLogger(__name__)
BOT_URL = os.environ.get("SUPPORTFLOW_BOT_URL", "http://127.0.0.1:3000")
FALLBACK = "Sorry, something went wrong on our side. Let me connect you with a colleague."
PAYLOAD_KEY = "supportflow"
BOT_UNREACHABLE = "bot_unreachable"
TRANSCRIPT_TURNS = 20  # the bot's bound on a transcript (supportflow/bot/memory.py)
TIMEOUT = aiohttp.ClientTimeout(total=30)
_session: "aiohttp.ClientSession | None" = None


def session() -> aiohttp.ClientSession:
    """One pooled session for the server's event loop: concurrent turns must not queue behind each other."""
    global _session
    if _session is None or _session.closed:
        token = os.environ.get("SUPPORTFLOW_INTERNAL_TOKEN", "")
        _session = aiohttp.ClientSession(timeout=TIMEOUT, headers={"Authorization": f"Bearer {token}"} if token else {})
    return _session


def form_completed(tracker: Tracker) -> bool:
    """Whether a form finished in this turn, so the answer is for the request that started it, not this message."""
    for event in reversed(tracker.events):
        if event.get("event") == "user":
            return False
        if event.get("event") == "active_loop" and event.get("name") is None:
            return True
    return False


def transcript(tracker: Tracker) -> List[Dict[Text, Text]]:
    """The conversation's last messages, from the tracker every Rasa replica shares: what a handoff shows the agent."""
    roles = {"user": "customer", "bot": "bot"}
    lines = [
        {"role": roles[event["event"]], "text": event["text"]}
        for event in tracker.events
        if event.get("event") in roles and isinstance(event.get("text"), str) and event["text"]
    ]
    return lines[-TRANSCRIPT_TURNS:]


class _ForwardToBot(Action):
    kind = "answer"

    def name(self) -> Text:
        return f"action_{self.kind}"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[Dict[Text, Any]]:
        latest = tracker.latest_message or {}
        metadata = latest.get("metadata") or {}
        payload = {
            "kind": self.kind,
            "conversation_id": tracker.sender_id,
            "request_id": metadata.get("request_id"),
            "channel": metadata.get("channel", "webchat"),
            "text": latest.get("text") or "",
            "intent": (latest.get("intent") or {}).get("name"),
            "confidence": (latest.get("intent") or {}).get("confidence"),
            "ranking": [{"intent": r.get("name"), "confidence": r.get("confidence")} for r in latest.get("intent_ranking") or []],
            "entities": [{"entity": e.get("entity"), "value": e.get("value")} for e in latest.get("entities") or []],
            "slots": {
                name: value for name, value in tracker.current_slot_values().items() if value is not None and name != "requested_slot"
            },
            "form_completed": form_completed(tracker),
            "classifier_unavailable": bool(latest.get("classifier_unavailable")),
            "out_of_scope": bool(latest.get("out_of_scope")),
            "transcript": transcript(tracker),
        }
        try:
            async with session().post(f"{BOT_URL}/internal/answer", json=payload) as response:
                response.raise_for_status()
                answer = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            log.error("request %s: the bot is unavailable: %s", payload["request_id"], error)
            dispatcher.utter_message(text=FALLBACK)
            dispatcher.utter_message(json_message={PAYLOAD_KEY: BOT_UNREACHABLE, "transcript": payload["transcript"]})
            return []
        for text in answer.get("messages", []):
            dispatcher.utter_message(text=text)
        if answer.get("custom"):
            dispatcher.utter_message(json_message=answer["custom"])  # the outcome, for the bot's turn waiting on Rasa
        return [SlotSet(name, value) for name, value in (answer.get("slots") or {}).items()]


class ActionAnswer(_ForwardToBot):
    kind = "answer"


class ActionHandoff(_ForwardToBot):
    kind = "handoff"


class ActionClarify(_ForwardToBot):
    kind = "clarify"
