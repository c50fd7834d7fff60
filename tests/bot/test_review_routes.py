"""The agent API's review queue and knowledge-gap routes, on the bot service with two registered agents.

Each door is tried as an attacker would: no token, a wrong token, a turn that was never queued, an intent from
outside the catalogue, a body that names its own agent. The queue and the report are what the flows write to
the lake (tests/review/ builds them from real turns)."""

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from supportflow.lake import open_lake
from supportflow.review.gaps import GapReport, Topic, write_report
from supportflow.review.queue import QueuedTurn, ReviewQueue, Suggestion, labelled_turns, write_queue
from supportflow.settings import get_settings
from tests.bot.test_security import ServedBot, served  # noqa: F401 - the service fixture

QUEUED = [
    QueuedTurn(
        turn_id="a" * 32,
        text="where is my new card, it has not come yet",
        intent="card_arrival",
        confidence=0.46,
        suggestions=[Suggestion(intent="card_arrival", confidence=0.46), Suggestion(intent="card_delivery_estimate", confidence=0.44)],
        reason="margin 0.02 between card_arrival and card_delivery_estimate",
        channel="sms",
        uncertainty=0.98,
    ),
    QueuedTurn(
        turn_id="b" * 32,
        text="my top-up did not go through",
        intent="top_up_failed",
        confidence=0.55,
        suggestions=[],
        reason="confidence 0.55",
        channel="webchat",
        uncertainty=0.45,
    ),
]


@pytest.fixture
def queued(served: ServedBot) -> Iterator[ServedBot]:  # noqa: F811 - the fixture imported above
    write_queue(open_lake(get_settings()), ReviewQueue(generated_at=datetime.now(UTC), turns_considered=10, items=QUEUED))
    yield served


def test_an_agent_sees_the_queue_labels_a_turn_and_the_label_lands_with_their_name(queued: ServedBot) -> None:
    page = queued.client.get("/agent/review?limit=5", headers=queued.as_agent("ann"))
    assert page.status_code == 200
    (first, second) = page.json()["items"]
    assert first == {
        "turn_id": "a" * 32,
        "text": "where is my new card, it has not come yet",
        "intent": "card_arrival",
        "confidence": 0.46,
        "suggestions": [{"intent": "card_arrival", "confidence": 0.46}, {"intent": "card_delivery_estimate", "confidence": 0.44}],
        "reason": "margin 0.02 between card_arrival and card_delivery_estimate",
    }
    assert queued.client.get("/agent/review?limit=1", headers=queued.as_agent("ann")).json()["items"] == [first]

    labelled = queued.client.post(
        f"/agent/review/{first['turn_id']}/label", json={"intent": "card_delivery_estimate"}, headers=queued.as_agent("bo")
    )
    assert labelled.status_code == 200 and labelled.json()["agent"] == "bo"
    lake = open_lake(get_settings())
    (path,) = [p for p in lake.files("tickets") if "agent_label-" in p]
    assert lake.read_parquet(path).iloc[0][["text", "intent", "channel"]].tolist() == [first["text"], "card_delivery_estimate", "sms"]
    assert lake.read_json("review", "labels", f"{first['turn_id']}.json")["agent"] == "bo"
    assert queued.client.get("/agent/review", headers=queued.as_agent("ann")).json()["items"] == [second]


def test_the_review_and_gap_routes_refuse_a_missing_or_wrong_agent_token(queued: ServedBot) -> None:
    write_report(
        open_lake(get_settings()),
        GapReport(
            generated_at=datetime.now(UTC),
            window_start=None,
            window_end=None,
            kb_threshold=0.5,
            questions=1,
            topics=[Topic(topic="can I buy bitcoin", count=1, examples=[], reasons={"no_answer": 1})],
        ),
    )
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Basic {queued.tokens['ann']}"}):
        for method, url, body in (
            ("GET", "/agent/review", None),
            ("POST", f"/agent/review/{'a' * 32}/label", {"intent": "card_arrival"}),
            ("GET", "/agent/gaps", None),
        ):
            refused = queued.client.request(method, url, json=body, headers=headers)
            assert refused.status_code == 401, (method, url, headers)
            assert "card" not in refused.text and "bitcoin" not in refused.text
    assert labelled_turns(open_lake(get_settings())) == set()


def test_a_label_for_an_unknown_turn_or_an_intent_outside_the_catalogue_is_refused(queued: ServedBot) -> None:
    ann = queued.as_agent("ann")
    for turn_id, body, status in (
        ("c" * 32, {"intent": "card_arrival"}, 404),  # never queued
        ("..%2F..%2Ftickets%2Fx", {"intent": "card_arrival"}, 404),  # a path out of the labels folder
        ("a" * 32, {"intent": "buy_bitcoin"}, 422),  # not in the catalogue
        ("a" * 32, {"intent": "card_arrival", "agent": "bo"}, 422),  # no one labels in another agent's name
        ("a" * 32, {}, 422),
    ):
        refused = queued.client.post(f"/agent/review/{turn_id}/label", json=body, headers=ann)
        assert refused.status_code == status, (turn_id, body, refused.text)
    lake = open_lake(get_settings())
    assert labelled_turns(lake) == set() and not [p for p in lake.files("tickets") if "agent_label-" in p]
    assert (
        "buy_bitcoin" in queued.client.post(f"/agent/review/{'a' * 32}/label", json={"intent": "buy_bitcoin"}, headers=ann).json()["detail"]
    )


def test_the_gap_report_is_served_once_the_flow_wrote_one(served: ServedBot) -> None:  # noqa: F811
    ann = served.as_agent("ann")
    assert served.client.get("/agent/gaps", headers=ann).json() == {"generated_at": None, "topics": []}
    assert served.client.get("/agent/review", headers=ann).json() == {"items": []}  # nor a queue before its flow ran
    at = datetime(2026, 11, 30, 6, 30, tzinfo=UTC)
    topic = Topic(topic="can I buy bitcoin", count=3, examples=["do you sell crypto", "bitcoin?"], reasons={"no_answer": 2, "unhelpful": 1})
    write_report(
        open_lake(get_settings()),
        GapReport(generated_at=at, window_start=None, window_end=at, kb_threshold=0.5, questions=3, topics=[topic]),
    )
    assert served.client.get("/agent/gaps", headers=ann).json() == {
        "generated_at": at.isoformat(),
        "topics": [
            {
                "topic": "can I buy bitcoin",
                "count": 3,
                "examples": ["do you sell crypto", "bitcoin?"],
                "reasons": {"no_answer": 2, "unhelpful": 1},
            }
        ],
    }
