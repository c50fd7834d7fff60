"""The knowledge-gap report: which questions count, how they group into topics, and in what order."""

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pytest

from supportflow.bot.turns import Turn
from supportflow.lake import Lake
from supportflow.review.gaps import (
    LOW_KB_SCORE,
    NO_ANSWER,
    UNHELPFUL,
    UNKNOWN_INTENT,
    gap_questions,
    knowledge_gaps,
    read_report,
    write_report,
)
from tests.review.conftest import answered

Embed = Callable[[Sequence[str]], np.ndarray]
THRESHOLD = 0.5


def handoff(text: str, reason: str) -> Turn:
    return Turn(conversation_id="c", channel="webchat", text=text, intent="crypto", confidence=0.9, route="handoff", handoff_reason=reason)


def weak(text: str) -> Turn:
    return answered(text, [("exchange_rate", 0.9), ("top_up_failed", 0.05)], kb_score=0.2)


@pytest.fixture
def turns() -> pd.DataFrame:
    rated = answered("how long does a bank transfer take to arrive", [("transfer_timing", 0.9), ("top_up_failed", 0.05)])
    rows = [
        handoff("can I buy bitcoin with my account", "nothing relevant in the knowledge base"),
        handoff("do you support buying crypto currency like bitcoin", "no article answers crypto"),
        weak("how do I buy bitcoin in the app"),
        handoff("is it possible to purchase bitcoin here", "nothing relevant in the knowledge base"),
        weak("can I get a loan for a car"),
        handoff("I would like a loan to buy a car", "nothing relevant in the knowledge base"),
        rated,
        handoff("do you sell kayaks", "outside every intent the classifier knows"),
        # not gaps: asked for a person, low confidence, answered well, a handoff's reply rated unhelpful
        handoff("a human please", "asked for a person"),
        handoff("my parcel never came, and I am angry", "not understood with confidence"),
        handoff("blorp fizz", "not understood with confidence"),
        answered("what is the exchange rate for dollars", [("exchange_rate", 0.9), ("top_up_failed", 0.05)], kb_score=0.9),
    ]
    return pd.DataFrame([turn.model_dump() for turn in rows])


@pytest.fixture
def ratings(turns: pd.DataFrame) -> pd.DataFrame:
    """Customers' ratings: the transfer question's answer did not help, the exchange rate's did."""
    rated = {
        "how long does a bank transfer take to arrive": False,
        "what is the exchange rate for dollars": True,
        "my parcel never came, and I am angry": False,  # the reply was "a colleague will answer": no article's fault
    }
    chosen = turns[turns["text"].isin(rated)]
    return pd.DataFrame({"turn_id": chosen["turn_id"], "helpful": [rated[text] for text in chosen["text"]]})


def test_only_the_knowledge_bases_failures_count_each_once(turns: pd.DataFrame, ratings: pd.DataFrame) -> None:
    questions = gap_questions(turns, THRESHOLD, ratings)
    assert dict(zip(questions["text"], questions["reason"], strict=True)) == {
        "can I buy bitcoin with my account": NO_ANSWER,
        "do you support buying crypto currency like bitcoin": NO_ANSWER,
        "how do I buy bitcoin in the app": LOW_KB_SCORE,
        "is it possible to purchase bitcoin here": NO_ANSWER,
        "can I get a loan for a car": LOW_KB_SCORE,
        "I would like a loan to buy a car": NO_ANSWER,
        "how long does a bank transfer take to arrive": UNHELPFUL,
        "do you sell kayaks": UNKNOWN_INTENT,
    }


def test_questions_group_by_topic_the_biggest_first_named_by_its_most_typical_question(
    turns: pd.DataFrame, ratings: pd.DataFrame, embed: Embed
) -> None:
    report = knowledge_gaps(turns, embed, THRESHOLD, ratings=ratings)

    assert report.questions == 8 and [topic.count for topic in report.topics] == [4, 2, 1, 1]
    bitcoin, loan, transfer, kayaks = report.topics  # one each: the unhelpful answer's first, then the name's order
    assert {bitcoin.topic, *bitcoin.examples} == {  # the medoid and its 3 examples
        "can I buy bitcoin with my account",
        "do you support buying crypto currency like bitcoin",
        "how do I buy bitcoin in the app",
        "is it possible to purchase bitcoin here",
    }
    assert bitcoin.reasons == {NO_ANSWER: 3, LOW_KB_SCORE: 1}
    assert {loan.topic, *loan.examples} == {"can I get a loan for a car", "I would like a loan to buy a car"}
    assert transfer.reasons == {UNHELPFUL: 1} and transfer.examples == []
    assert (kayaks.topic, kayaks.reasons) == ("do you sell kayaks", {UNKNOWN_INTENT: 1})
    markdown = report.markdown("run-1")
    assert markdown.index(bitcoin.topic) < markdown.index(loan.topic) and "MLflow run `run-1`" in markdown


def test_the_latest_report_is_read_back_and_none_before_the_first(
    local_lake: Lake, turns: pd.DataFrame, ratings: pd.DataFrame, embed: Embed
) -> None:
    assert read_report(local_lake) is None
    report = knowledge_gaps(turns, embed, THRESHOLD, ratings=ratings)
    write_report(local_lake, report)
    assert read_report(local_lake) == report
    assert len(local_lake.files("review", "gaps", suffix=".json")) == 2  # latest and its dated copy


def test_no_gaps_is_an_empty_report(embed: Embed) -> None:
    quiet = pd.DataFrame([answered("what is the exchange rate", [("exchange_rate", 0.9), ("top_up_failed", 0.05)]).model_dump()])
    report = knowledge_gaps(quiet, embed, THRESHOLD)
    assert report.questions == 0 and report.topics == []
