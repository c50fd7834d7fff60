"""Below the threshold the bot is unsure, not lost: when the classifier's top intents are close and together likely
hold the answer, the customer is offered them, and the one picked is answered. A person takes over only when no
offer fits, or the customer picks none.

The offer travels in a Rasa slot (`OFFERED_SLOT`), so the next turn can be finished by any bot replica.
"""

import difflib
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

OFFERED_SLOT = "offered_intents"  # declared by the dialogue build; set by the bot, cleared once answered or declined
ORDINALS = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "last": -1}
_NUMBER = re.compile(r"^\W*(?:(?:option|number|no\.?|#)\s*)?([1-9])\W*$", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
SHORT_REPLY_WORDS = 6  # a pick is a short reply; a longer message is a new question


def options_to_offer(ranking: Sequence[Mapping[str, Any]], answerable: Collection[str], max_options: int, min_share: float) -> list[str]:
    """The top intents (at most `max_options`) the knowledge base can answer, each at least a fifth as likely as the
    first, when together they hold `min_share` of the probability; none otherwise (a guess among many helps nobody)."""
    candidates = [r for r in ranking if r.get("intent") in answerable and r.get("confidence") is not None][:max_options]
    if not candidates:
        return []
    top = float(candidates[0]["confidence"])
    close = [r for r in candidates if float(r["confidence"]) >= top / 5]
    if sum(float(r["confidence"]) for r in close) < min_share:
        return []
    return [str(r["intent"]) for r in close]


def numbered(intents: Sequence[str], labels: Mapping[str, str]) -> str:
    """ "(1) ... or (2) ...": the options as a question names them, each label without its closing punctuation, so the
    desk's text around them ends the question ("Is it about {options}?")."""
    return " or ".join(f"({i}) {labels[intent].rstrip('?.!')}" for i, intent in enumerate(intents, start=1))


def picked(text: str, intent: str | None, offered: Sequence[str], labels: Mapping[str, str]) -> str | None:
    """The offered intent a reply chooses: its number or ordinal, its label (or most of it), or a "yes" to a single
    offer. A reply that names none of them is a new message, not a choice."""
    words = _WORD.findall(text.lower())
    if not offered or not words or len(words) > SHORT_REPLY_WORDS:
        return None
    number = _NUMBER.match(text)
    position = int(number.group(1)) if number else next((ORDINALS[w] for w in words if w in ORDINALS), None)
    if position is not None:
        if position == -1:
            return offered[-1]
        return offered[position - 1] if position <= len(offered) else None
    if intent == "affirm" and len(offered) == 1:
        return offered[0]
    scores = {option: _likeness(words, _WORD.findall(labels[option].lower())) for option in offered}
    ranked = sorted(scores, key=scores.__getitem__, reverse=True)
    if scores[ranked[0]] < 0.6 or (len(ranked) > 1 and scores[ranked[1]] == scores[ranked[0]]):
        return None
    return ranked[0]


def _likeness(said: list[str], label: list[str]) -> float:
    """How much of a label a reply says: the share of its words found in the label, a misspelt word counting when
    it is close to one (`difflib`'s ratio of at least 0.8)."""
    words = set(said)
    found = sum(1 for word in words if word in label or difflib.get_close_matches(word, label, n=1, cutoff=0.8))
    return found / len(words)
