"""What counts as a pick among offered intents, and when an offer is worth making."""

import pytest

from supportflow.bot.clarify import options_to_offer, picked

OFFERED = ["card_arrival", "card_delivery_estimate", "change_pin"]
LABELS = {
    "card_arrival": "My card hasn't arrived yet",
    "card_delivery_estimate": "When will my card arrive?",
    "change_pin": "How do I change my PIN?",
}


@pytest.mark.parametrize(
    ("reply", "intent", "expected"),
    [
        ("2", None, "card_delivery_estimate"),
        ("option 3.", None, "change_pin"),
        ("#1", None, "card_arrival"),
        ("The first one please", None, "card_arrival"),
        ("the last", None, "change_pin"),
        ("change my pin", None, "change_pin"),
        ("chnage pin", None, "change_pin"),  # a typo
        ("4", None, None),  # no fourth option
        ("my card", None, None),  # names two of them equally
        ("yes", "affirm", None),  # a yes to three options picks none
        ("I want to close my account because the app keeps crashing", None, None),  # a new message, not a pick
    ],
)
def test_a_reply_picks_an_offered_intent_by_number_ordinal_or_words(reply: str, intent: str | None, expected: str | None) -> None:
    assert picked(reply, intent, OFFERED, LABELS) == expected


def test_a_yes_picks_a_single_offer() -> None:
    assert picked("yes please", "affirm", ["change_pin"], LABELS) == "change_pin"


def test_an_offer_holds_only_close_answerable_intents_that_together_are_likely() -> None:
    ranking = [
        {"intent": "nlu_fallback", "confidence": 0.9},
        {"intent": "card_arrival", "confidence": 0.5},
        {"intent": "greet", "confidence": 0.2},  # not answerable from an article
        {"intent": "change_pin", "confidence": 0.2},
        {"intent": "card_delivery_estimate", "confidence": 0.05},  # a tenth of the first: not close
    ]
    answerable = {"card_arrival", "change_pin", "card_delivery_estimate"}
    assert options_to_offer(ranking, answerable, max_options=3, min_share=0.6) == ["card_arrival", "change_pin"]
    assert options_to_offer(ranking, answerable, max_options=1, min_share=0.6) == []  # 0.5 alone is a coin toss
    assert options_to_offer(ranking, answerable, max_options=1, min_share=0.5) == ["card_arrival"]
    assert options_to_offer(ranking, set(), max_options=3, min_share=0.1) == []
