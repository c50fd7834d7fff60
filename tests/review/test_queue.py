"""The review queue from a real turn log, and an agent's label landing in the lake for the next training run."""

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from supportflow.bot.turns import Turn, TurnLog, read_turns
from supportflow.ingest.load import ingest_file
from supportflow.lake import Lake
from supportflow.review.queue import ReviewError, build_queue, label_turn, labelled_turns, pending, read_queue, write_queue
from supportflow.settings import Settings
from supportflow.validate.snapshot import validate_lake
from tests.review.conftest import answered

Embed = Callable[[Sequence[str]], np.ndarray]
INTENTS = ("card_arrival", "card_delivery_estimate", "lost_or_stolen_card", "top_up_failed", "exchange_rate")


@pytest.fixture
def turns(local_lake: Lake) -> list[Turn]:
    """Written through the turn log and read back, as the flow reads them."""
    written = [
        answered("where is my new card, it has not come yet", [("card_arrival", 0.46), ("card_delivery_estimate", 0.44)]),
        answered("my new card still has not come, where is it", [("card_arrival", 0.47), ("card_delivery_estimate", 0.43)]),
        answered("where is my new card, it has not come yet", [("card_arrival", 0.46), ("card_delivery_estimate", 0.44)]),
        answered("my top-up did not go through", [("top_up_failed", 0.55), ("exchange_rate", 0.15)]),
        answered("what rate do you use to change euros to pounds", [("exchange_rate", 0.97), ("top_up_failed", 0.01)]),
        Turn(conversation_id="c2", channel="sms", text="I lost my card", intent="lost_or_stolen_card", confidence=0.3, route="kb"),
        Turn(conversation_id="c3", channel="webchat", text="a person please", intent="nlu_fallback", confidence=0.2, route="handoff"),
    ]
    log = TurnLog(local_lake)
    for turn in written:
        log.record(turn)
    log.flush()
    return written


def test_the_queue_puts_the_most_uncertain_first_and_each_question_once(local_lake: Lake, turns: list[Turn], embed: Embed) -> None:
    queue = build_queue(read_turns(local_lake), embed)

    texts = [item.text for item in queue.items]
    # the two card questions are one question reworded (and one of them was asked twice): one of them is shown
    assert texts == ["where is my new card, it has not come yet", "I lost my card", "my top-up did not go through", texts[-1]]
    assert texts[-1] == "what rate do you use to change euros to pounds"  # the sure one last
    first = queue.items[0]
    assert first.turn_id == turns[0].turn_id and first.intent == "card_arrival" and first.confidence == pytest.approx(0.46)
    assert first.reason == "margin 0.02 between card_arrival and card_delivery_estimate"
    assert [(s.intent, s.confidence) for s in first.suggestions] == [("card_arrival", 0.46), ("card_delivery_estimate", 0.44)]
    assert queue.items[1].reason == "confidence 0.30" and queue.items[1].suggestions == []  # a turn logged without a ranking
    assert queue.turns_considered == len(turns)  # the handoff was read, and left out: its agent labels it there


def test_an_unknown_intent_score_ranks_a_turn_when_the_turn_log_has_one(embed: Embed) -> None:
    frame = pd.DataFrame([answered("hello there", [("greet", 0.9), ("goodbye", 0.05)]).model_dump()] * 1)
    frame = pd.concat([frame, pd.DataFrame([answered("can I buy shares", [("exchange_rate", 0.7), ("top_up_failed", 0.1)]).model_dump()])])
    frame["unknown_score"] = [0.1, 0.93]
    queue = build_queue(frame, embed)
    assert [item.text for item in queue.items] == ["can I buy shares", "hello there"]
    assert queue.items[0].reason == "unknown-intent score 0.93"


def test_a_label_lands_as_a_ticket_names_its_agent_and_leaves_the_queue(
    local_lake: Lake, local_settings: Settings, turns: list[Turn], embed: Embed, banking77_sample: Path
) -> None:
    write_queue(local_lake, build_queue(read_turns(local_lake), embed))
    turn_id = pending(local_lake, 10)[0].turn_id
    record = label_turn(local_lake, turn_id, "card_delivery_estimate", "ann", INTENTS)

    assert record.agent == "ann" and record.predicted_intent == "card_arrival" and labelled_turns(local_lake) == {turn_id}
    (path,) = [p for p in local_lake.files("tickets") if f"agent_label-{record.ticket_id}" in p]
    ticket = local_lake.read_parquet(path).iloc[0]
    assert ticket[["source", "text", "intent", "channel"]].tolist() == [
        "agent_label",
        "where is my new card, it has not come yet",
        "card_delivery_estimate",
        "webchat",
    ]
    assert turn_id not in [item.turn_id for item in pending(local_lake, 10)]
    assert len(read_queue(local_lake).items) == 4  # the queue itself is the flow's to rebuild; the label hides the turn
    with pytest.raises(ReviewError, match=r"labelled 'card_delivery_estimate' by ann already") as again:  # a second agent
        label_turn(local_lake, turn_id, "card_arrival", "bo", INTENTS)
    assert again.value.status == 409 and len([p for p in local_lake.files("tickets") if "agent_label-" in p]) == 1

    # the next training run's snapshot holds it
    ingest_file(str(banking77_sample), local_lake, local_settings)
    snapshot = validate_lake(local_lake, local_settings)
    splits = [
        pd.read_parquet(local_lake.fs.open(local_lake.path("snapshots", snapshot.snapshot_id, f"{s}.parquet")))
        for s in ("train", "validation", "test")
    ]
    learned = pd.concat(splits)
    assert learned[learned["source"] == "agent_label"]["text"].tolist() == ["where is my new card, it has not come yet"]


def test_a_label_for_an_unknown_turn_or_intent_is_refused_and_writes_nothing(local_lake: Lake, turns: list[Turn], embed: Embed) -> None:
    write_queue(local_lake, build_queue(read_turns(local_lake), embed))
    queued = pending(local_lake, 1)[0].turn_id
    for turn_id, intent, status in (
        (queued, "eaten_by_atm", 422),
        ("0" * 32, "card_arrival", 404),
        (turns[-1].turn_id, "card_arrival", 404),  # a real turn, but a handoff: never queued
        ("../../tickets/x", "card_arrival", 404),
    ):
        with pytest.raises(ReviewError) as refused:
            label_turn(local_lake, turn_id, intent, "ann", INTENTS)
        assert refused.value.status == status, (turn_id, intent)
    assert local_lake.files("tickets") == [] and labelled_turns(local_lake) == set()


def test_no_queue_before_the_flow_ran_is_an_empty_page(local_lake: Lake) -> None:
    assert read_queue(local_lake) is None and pending(local_lake, 20) == []
    with pytest.raises(ReviewError, match="no turn 'abc' in the review queue"):
        label_turn(local_lake, "abc", "card_arrival", "ann", INTENTS)
