"""Phone calls through Twilio: the caller speaks, Twilio transcribes, the same bot answers, Twilio says it.

Each exchange is one signed webhook request answered with TwiML. `<Gather input="speech">` asks Twilio to listen
and post what it heard (`SpeechResult`) back to the voice webhook; the bot answers it as it answers an SMS, and the
answer is said inside the next `<Gather>`, so the caller can go on. A handoff puts the call through (`<Dial>`) to
the desk's agent number (`channels.agent_phone` in its workspace). A silence is asked about once more, and a second
one goes to a person too: a caller the recogniser cannot hear should not be left talking to a machine. With no agent
number, or once the call is over, an agent answers the handoff in the console, and the reply reaches a caller whose
number was shown as an SMS from the number they called (supportflow/bot/delivery.py).

How many silences in a row a call has had travels in the `<Gather>` action's own URL (`?silence=N`), which Twilio
signs with the rest of the request, so the count needs no state in the bot and cannot be forged.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass

from twilio.twiml.voice_response import Gather, VoiceResponse

from supportflow.workspace import BotTexts

CHANNEL = "phone"  # the channel a call's turns are logged under, as a ticket from a call would be
NO_SPEECH_TRIES = 2  # silences in a row before the call goes to a person
CALLER = re.compile(r"^\+[1-9][0-9]{6,14}$")  # a caller id Twilio could show; "anonymous" and the like are not one


@dataclass(frozen=True)
class Call:
    conversation_id: str  # phone:+<caller>, like an SMS's; a withheld number: call:<CallSid>, a conversation per call
    speech: str  # what Twilio heard; empty on the first request of a call and after a silence
    caller: str | None = None  # the number an agent's reply can be texted to; None when withheld
    desk: str = ""  # the desk's number the caller dialled, which that text comes from


@dataclass(frozen=True)
class VoiceReply:
    """What the bot made of what the caller said: its replies, and whether it handed the conversation off."""

    replies: list[str]
    handed_off: bool


def parse(form: dict[str, str]) -> Call:
    caller = form.get("From", "")
    shown = bool(CALLER.match(caller))
    conversation_id = f"phone:{caller}" if shown else f"call:{form.get('CallSid', '')}"
    return Call(conversation_id, (form.get("SpeechResult") or "").strip(), caller if shown else None, form.get("To", ""))


def listen(say: list[str], action: str) -> str:
    """Say the texts while listening, and post what was heard (or nothing, after a silence) to `action`."""
    response = VoiceResponse()
    gather = Gather(input="speech", action=action, method="POST", speech_timeout="auto", action_on_empty_result=True)
    for text in say:
        gather.say(text)
    response.append(gather)
    return str(response)


def put_through(say: list[str], agent_phone: str | None) -> str:
    """Say the texts, then connect the caller to the desk's agent number; with none, end the call (the handoff waits
    in the queue for an agent)."""
    response = VoiceResponse()
    for text in say:
        response.say(text)
    if agent_phone:
        response.dial(agent_phone)
    else:
        response.hangup()
    return str(response)


def answer_call(
    call: Call,
    silences: int | None,
    action: Callable[[int], str],
    respond: Callable[[str, str], VoiceReply],
    hand_off: Callable[[str], None],
    texts: BotTexts,
    agent_phone: str | None,
) -> str:
    """The TwiML for one request of a call. `silences` is None on the call's first request, else the silences in a
    row before this one; `action(n)` is the voice webhook's URL carrying n; `respond(conversation_id, text)` is
    the bot's turn; `hand_off(conversation_id)` opens a handoff for a caller who was not heard."""
    if call.speech:
        turn = respond(call.conversation_id, call.speech)
        return put_through(turn.replies, agent_phone) if turn.handed_off else listen(turn.replies, action(0))
    if silences is None:
        return listen([texts.greeting], action(0))
    if silences + 1 < NO_SPEECH_TRIES:
        return listen([texts.no_speech], action(silences + 1))
    hand_off(call.conversation_id)
    return put_through([texts.handoff], agent_phone)
