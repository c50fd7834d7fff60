"""The knowledge-gap report: what customers asked that the knowledge base did not answer, grouped by topic.

Four signs of a gap, all from the turn log: a handoff because no article was relevant (or none answers the
intent), a handoff of a question outside every intent the desk has (a topic for a new intent and its article), an
answer whose knowledge-base score was below the served threshold, and an answer the customer rated unhelpful (its
rating in the lake's `ratings/` area, supportflow/bot/feedback.py). Their questions are embedded (the knowledge
base's MiniLM) and clustered (agglomerative, average linkage on cosine distance, so the number of topics follows
the questions); a topic is named by its medoid, the question most like the others, and shows the next most
typical as examples. Topics are ordered by how many questions they hold, then by how many were rated unhelpful:
the article that would answer the most customers is the one to write first.

The `knowledge_gaps` flow writes it to the lake (`review/gaps/latest.json`, and a dated copy), to MLflow and as a
Prefect artifact; `GET /agent/gaps` serves the latest. The clustering imports scikit-learn only when it runs: the
bot service reads the report through this module and must not load it (tests/bot/test_service_imports.py).
"""

import math
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from pydantic import BaseModel

from supportflow.lake import Lake

REPORTS = ("review", "gaps")
LATEST = "latest.json"
NO_ANSWER = "no_answer"  # handed off: nothing relevant in the knowledge base, or no article for the intent
LOW_KB_SCORE = "low_kb_score"  # answered, from an article scored below the served threshold
UNHELPFUL = "unhelpful"  # answered, and the customer said it did not help
UNKNOWN_INTENT = "unknown_intent"  # handed off: outside every intent the desk has, so no article could answer it
# The engine's handoff reasons that mean the knowledge base had no answer (supportflow/bot/engine.py); the others
# (asked for a person, low confidence, a part down) are not the articles' fault.
NO_ANSWER_REASONS = ("nothing relevant in the knowledge base", "no article answers ")
UNKNOWN_INTENT_REASONS = ("outside every intent the classifier knows",)  # the unknown-intent detector's handoff
ANSWERED = ("kb", "llm")
DEFAULT_DISTANCE = 0.45  # cosine distance (average linkage) under which two questions are one topic
EXAMPLES = 3


class Topic(BaseModel):
    topic: str  # the medoid question
    count: int
    examples: list[str]
    reasons: dict[str, int]


class GapReport(BaseModel):
    generated_at: datetime
    window_start: datetime | None
    window_end: datetime | None
    kb_threshold: float
    questions: int
    topics: list[Topic]

    def lines(self) -> list[str]:
        shown = [f"{t.count:4}  {t.topic[:90]}  ({', '.join(f'{k} {v}' for k, v in t.reasons.items())})" for t in self.topics[:15]]
        return [f"{self.questions} questions in {len(self.topics)} topics, the one to write first at the top", *shown]

    def markdown(self, run_id: str | None = None) -> str:
        lines = [
            "# Knowledge gaps",
            "",
            f"{self.questions} questions the knowledge base did not answer well, in {len(self.topics)} topics"
            f" ({self.window_start or 'the start'} to {self.window_end or 'now'}; low score: below {self.kb_threshold:.3f})."
            + (f" MLflow run `{run_id}`." if run_id else ""),
            "",
            "Write first the article for the topic at the top.",
            "",
            "| # | topic | questions | why | examples |",
            "|---|---|---|---|---|",
        ]
        for rank, topic in enumerate(self.topics, start=1):
            why = ", ".join(f"{reason} {count}" for reason, count in sorted(topic.reasons.items(), key=lambda kv: -kv[1]))
            examples = "<br>".join(_cell(example) for example in topic.examples)
            lines.append(f"| {rank} | {_cell(topic.topic)} | {topic.count} | {why} | {examples} |")
        return "\n".join(lines) + "\n"

    def table(self) -> pd.DataFrame:
        """One row a topic, for MLflow's table view."""
        return pd.DataFrame(
            [
                {
                    "rank": rank,
                    "topic": t.topic,
                    "count": t.count,
                    "examples": " | ".join(t.examples),
                    **{f"reason_{k}": v for k, v in t.reasons.items()},
                }
                for rank, t in enumerate(self.topics, start=1)
            ]
        )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def gap_questions(turns: pd.DataFrame, kb_threshold: float, ratings: pd.DataFrame | None = None) -> pd.DataFrame:
    """The questions that show a gap, one row each (`turn_id`, `text`, `reason`); a turn counts once, by its first sign.

    `ratings` (`turn_id`, `helpful`: each rated turn's latest, as supportflow.bot.feedback.read_ratings gives them)
    name the turns customers found unhelpful; a rating of a turn outside `turns` has no question to show."""
    rows: dict[str, tuple[str, str]] = {}
    reasons = turns["handoff_reason"] if "handoff_reason" in turns else pd.Series(None, index=turns.index, dtype="object")
    for turn_id, text, route, reason, score in zip(
        turns["turn_id"], turns["text"], turns["route"], reasons, turns["kb_score"], strict=True
    ):
        if _missing(text):
            continue
        if route == "handoff" and not _missing(reason) and str(reason).startswith(NO_ANSWER_REASONS):
            rows.setdefault(turn_id, (text, NO_ANSWER))
        elif route == "handoff" and not _missing(reason) and str(reason).startswith(UNKNOWN_INTENT_REASONS):
            rows.setdefault(turn_id, (text, UNKNOWN_INTENT))
        elif route in ANSWERED and not _missing(score) and score < kb_threshold:
            rows.setdefault(turn_id, (text, LOW_KB_SCORE))
    if ratings is not None and len(ratings):
        answered = zip(turns["turn_id"], turns["text"], turns["route"], strict=True)  # a rating of a handoff's reply is no article's
        texts = {turn_id: text for turn_id, text, route in answered if not _missing(text) and route in ANSWERED}
        for turn_id in ratings.loc[~ratings["helpful"].astype(bool), "turn_id"]:
            if turn_id in texts:
                rows.setdefault(turn_id, (texts[turn_id], UNHELPFUL))
    return pd.DataFrame([(turn_id, text, reason) for turn_id, (text, reason) in rows.items()], columns=["turn_id", "text", "reason"])


def cluster_topics(
    questions: pd.DataFrame, embeddings: np.ndarray, distance: float = DEFAULT_DISTANCE, examples: int = EXAMPLES
) -> list[Topic]:
    """Topics from the questions (`text`, `reason`) and their unit embeddings, the one to write first at the top."""
    if len(questions) != len(embeddings):
        raise ValueError(f"{len(questions)} questions for {len(embeddings)} embeddings")
    if not len(questions):
        return []
    if len(questions) == 1:
        labels = np.zeros(1, dtype=int)
    else:
        from sklearn.cluster import AgglomerativeClustering  # the flow's dependency only: see the module's docstring

        labels = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average", distance_threshold=distance).fit_predict(
            embeddings
        )
    texts, reasons = questions["text"].tolist(), questions["reason"].tolist()
    topics = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        typical = (embeddings[members] @ embeddings[members].T).mean(axis=1)  # mean similarity to the topic's questions
        ordered = [texts[members[i]] for i in np.argsort(-typical, kind="stable")]
        distinct = list(dict.fromkeys(ordered))
        counted = Counter(reasons[i] for i in members)
        topics.append(Topic(topic=distinct[0], count=len(members), examples=distinct[1 : 1 + examples], reasons=dict(counted)))
    topics.sort(key=lambda t: (-t.count, -t.reasons.get(UNHELPFUL, 0), t.topic))
    return topics


def knowledge_gaps(
    turns: pd.DataFrame,
    embed: Callable[[Sequence[str]], np.ndarray],
    kb_threshold: float,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    distance: float = DEFAULT_DISTANCE,
    ratings: pd.DataFrame | None = None,
) -> GapReport:
    questions = gap_questions(turns, kb_threshold, ratings)
    embeddings = embed(questions["text"].tolist()) if len(questions) else np.zeros((0, 1), dtype=np.float32)
    return GapReport(
        generated_at=datetime.now(UTC),
        window_start=window_start,
        window_end=window_end,
        kb_threshold=kb_threshold,
        questions=len(questions),
        topics=cluster_topics(questions, embeddings, distance),
    )


def write_report(lake: Lake, report: GapReport) -> str:
    """The latest report, which the bot serves, and a dated copy beside it (reports are small; the history is cheap)."""
    body = report.model_dump(mode="json")
    lake.write_json(body, *REPORTS, f"{report.generated_at:%Y%m%dT%H%M%SZ}.json")
    return lake.write_json(body, *REPORTS, LATEST)


def read_report(lake: Lake) -> GapReport | None:
    """The latest report; None before the flow's first run."""
    if not lake.exists(*REPORTS, LATEST):
        return None
    return GapReport.model_validate(lake.read_json(*REPORTS, LATEST))
