"""The review queue: recent turns the bot answered on its own that an agent's label would teach the most.

The `review_queue` flow builds it from the turn log (flows/review_queue.py) and writes it to the lake
(`review/queue.json`); the bot service only reads it (`GET /agent/review`), so serving needs no embedder and no
clustering. An agent's label (`POST /agent/review/{turn_id}/label`) lands as a labelled ticket through the same
door as a handoff's (supportflow/ingest/labels.py), and a record of who gave it (`review/labels/<turn_id>.json`)
keeps the turn out of the queue from then on.
"""

import math
import re
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from pydantic import BaseModel

from supportflow.errors import SupportflowError
from supportflow.ingest.labels import write_label
from supportflow.lake import Lake
from supportflow.review.selection import DEFAULT_MAX_SIMILARITY, ranking_uncertainty, select_diverse

QUEUE = ("review", "queue.json")
LABELS = ("review", "labels")
BOT_ANSWERED = ("kb", "llm")  # routes where the bot answered alone: a handoff's intent is confirmed by its agent already
MAX_QUEUE = 200  # what one build keeps: more than a day of agents' spare minutes
TURN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what the turn log issues (uuid hex); a label's record is named by it
UNKNOWN_SCORE = "unknown_score"  # the unknown-intent detector's score, where the turn log has one


class ReviewError(SupportflowError):
    """A label the queue cannot take; `status` is the HTTP status that fits (404 unknown turn, 409 labelled already,
    422 bad intent)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Suggestion(BaseModel):
    intent: str
    confidence: float


class ReviewItem(BaseModel):
    """What an agent sees of one turn."""

    turn_id: str
    text: str
    intent: str
    confidence: float
    suggestions: list[Suggestion]
    reason: str


class QueuedTurn(ReviewItem):
    channel: str  # the label's ticket keeps it, as a handoff's does
    uncertainty: float


class ReviewQueue(BaseModel):
    generated_at: datetime
    turns_considered: int
    items: list[QueuedTurn]

    def lines(self) -> list[str]:
        shown = [f"{item.turn_id}  {item.intent} ({item.reason}): {item.text[:80]}" for item in self.items[:10]]
        more = [f"... and {len(self.items) - 10} more"] if len(self.items) > 10 else []
        return [f"{len(self.items)} turns to label, picked from {self.turns_considered} turns", *shown, *more]

    def markdown(self) -> str:
        rows = [f"| {item.intent} | {item.reason} | {item.text.replace('|', '/')[:120]} |" for item in self.items[:50]]
        header = f"# Review queue\n\n{len(self.items)} turns to label (first 50 shown), from {self.turns_considered} turns.\n\n"
        return header + "| predicted | why | message |\n|---|---|---|\n" + "\n".join(rows) + "\n"


class LabelRecord(BaseModel):
    """Who labelled which turn: the ticket itself has no column for the agent."""

    turn_id: str
    ticket_id: str
    intent: str
    predicted_intent: str
    agent: str
    labelled_at: datetime


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def uncertainty_of(turn: pd.Series) -> tuple[float, str, list[Suggestion]]:
    """How unsure the model was about one turn, why in words, and its ranking as suggestions.

    The margin between the top two intents where the turn kept its ranking; the unknown-intent score where the
    detector gave one and it is the higher; otherwise one minus the confidence."""
    ranking = turn.get("ranking")
    suggestions = [Suggestion(intent=str(r["intent"]), confidence=float(r["confidence"])) for r in (ranking if _present(ranking) else [])]
    suggestions.sort(key=lambda s: -s.confidence)
    confidence = float(turn["confidence"])
    if len(suggestions) >= 2:
        score = ranking_uncertainty([s.confidence for s in suggestions])
        first, second = suggestions[:2]
        reason = f"margin {first.confidence - second.confidence:.2f} between {first.intent} and {second.intent}"
    else:
        score, reason = 1.0 - confidence, f"confidence {confidence:.2f}"
    unknown = turn.get(UNKNOWN_SCORE)
    if _present(unknown) and float(unknown) > score:
        score, reason = float(unknown), f"unknown-intent score {float(unknown):.2f}"
    return score, reason, suggestions


def labelled_turns(lake: Lake) -> set[str]:
    """Turns an agent labelled already (each has its record in `review/labels/`)."""
    return {path.rsplit("/", 1)[-1].removesuffix(".json") for path in lake.files(*LABELS, suffix=".json")}


def build_queue(
    turns: pd.DataFrame,
    embed: Callable[[Sequence[str]], np.ndarray],
    labelled: Collection[str] = (),
    limit: int = MAX_QUEUE,
    max_similarity: float = DEFAULT_MAX_SIMILARITY,
) -> ReviewQueue:
    """The queue from `turns` (the turn log's frame): bot-answered, not labelled yet, most uncertain and diverse first.

    Identical messages are one candidate before anything is embedded; near-identical ones are kept apart by the
    selection (supportflow/review/selection.py)."""
    answered = turns[turns["route"].isin(BOT_ANSWERED) & turns["intent"].notna() & turns["confidence"].notna()]
    answered = answered[~answered["turn_id"].isin(set(labelled))]
    rows = [(turn, *uncertainty_of(turn)) for _, turn in answered.iterrows()]
    rows.sort(key=lambda row: -row[1])
    unique, seen = [], set()
    for row in rows:  # most uncertain first, so the copy kept of a repeated message is its most uncertain turn
        if row[0]["text"] not in seen:
            seen.add(row[0]["text"])
            unique.append(row)
    items: list[QueuedTurn] = []
    if unique:
        embeddings = embed([row[0]["text"] for row in unique])
        for index in select_diverse(np.array([row[1] for row in unique]), embeddings, limit, max_similarity):
            turn, score, reason, suggestions = unique[index]
            items.append(
                QueuedTurn(
                    turn_id=str(turn["turn_id"]),
                    text=str(turn["text"]),
                    intent=str(turn["intent"]),
                    confidence=float(turn["confidence"]),
                    suggestions=suggestions,
                    reason=reason,
                    channel=str(turn["channel"]),
                    uncertainty=round(score, 6),
                )
            )
    return ReviewQueue(generated_at=datetime.now(UTC), turns_considered=len(turns), items=items)


def write_queue(lake: Lake, queue: ReviewQueue) -> str:
    return lake.write_json(queue.model_dump(mode="json"), *QUEUE)


def read_queue(lake: Lake) -> ReviewQueue | None:
    """The latest queue the flow wrote; None before its first run."""
    if not lake.exists(*QUEUE):
        return None
    return ReviewQueue.model_validate(lake.read_json(*QUEUE))


def pending(lake: Lake, limit: int) -> list[ReviewItem]:
    """The first `limit` queued turns nobody has labelled since the queue was built, for an agent's screen."""
    queue = read_queue(lake)
    if queue is None:
        return []
    done = labelled_turns(lake)
    fields = set(ReviewItem.model_fields)
    return [ReviewItem.model_validate(item.model_dump(include=fields)) for item in queue.items if item.turn_id not in done][:limit]


def label_turn(lake: Lake, turn_id: str, intent: str, agent: str, intents: Collection[str]) -> LabelRecord:
    """An agent's intent for a queued turn: a labelled ticket for the next training run, and who gave it.

    Only a turn in the queue can be labelled: the queue holds its text, and no one labels a turn they were never shown."""
    if intent not in intents:
        raise ReviewError(422, f"intent {intent!r} is not in the intent catalogue")
    queue = read_queue(lake) if TURN_ID.match(turn_id) else None
    item = next((item for item in queue.items if item.turn_id == turn_id), None) if queue else None
    if item is None:
        raise ReviewError(404, f"no turn {turn_id[:64]!r} in the review queue")
    if lake.exists(*LABELS, f"{turn_id}.json"):  # two agents answering one turn would teach the model both labels
        given = LabelRecord.model_validate(lake.read_json(*LABELS, f"{turn_id}.json"))
        raise ReviewError(409, f"turn {turn_id} was labelled {given.intent!r} by {given.agent} already")
    ticket_id = write_label(lake, item.text, intent, item.channel)
    record = LabelRecord(
        turn_id=turn_id, ticket_id=ticket_id, intent=intent, predicted_intent=item.intent, agent=agent, labelled_at=datetime.now(UTC)
    )
    lake.write_json(record.model_dump(mode="json"), *LABELS, f"{turn_id}.json")
    return record
