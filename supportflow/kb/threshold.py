"""The relevance threshold: above it the bot answers from the knowledge base, below it escalates.

Calibrated on labelled questions (text plus the documents that answer it). Each question is asked
twice: once against the whole knowledge base (it should be answered, with a relevant document on
top) and once with its relevant documents held out, which is exactly the case "nothing in the
knowledge base answers this" (it should be escalated). The threshold is the score that gets the
most of both decisions right; it is stored with the build it was calibrated on, because scores
shift whenever the documents or the retrieval change.
"""

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

from supportflow.kb.retrieval import Ranker, RetrievalConfig


class LabelledQuestion(BaseModel):
    text: str
    relevant: set[str]  # document ids


class Calibration(BaseModel):
    threshold: float
    source: str
    questions: int = 0
    accuracy: float | None = None  # share of right answer/escalate decisions, both cases counted
    answer_precision: float | None = None  # of the answered in-scope questions, share with a relevant top document
    answered_in_scope: float | None = None
    escalated_out_of_scope: float | None = None


def calibrate(retriever: Ranker, config: RetrievalConfig, questions: Sequence[LabelledQuestion], source: str) -> Calibration:
    in_scope: list[tuple[float, bool]] = []  # (top score, top document relevant)
    out_of_scope: list[float] = []  # top score with the relevant documents held out
    for question in questions:
        ranking, relevance = retriever.scores(question.text, config)
        top = retriever.answers(ranking, relevance, 1)
        if not top:
            continue
        in_scope.append((top[0].score, top[0].doc_id in question.relevant))
        rest = retriever.answers(ranking, relevance, 1, exclude=question.relevant)
        if rest:
            out_of_scope.append(rest[0].score)
    if not in_scope or not out_of_scope:
        raise ValueError("calibration needs questions whose relevant documents are in the knowledge base")
    inside = np.array([s for s, _ in in_scope])
    right = np.array([ok for _, ok in in_scope])
    outside = np.array(out_of_scope)
    candidates = np.unique(np.concatenate([inside, outside]))
    # A decision is right when an in-scope question is answered with a relevant document, or an out-of-scope one escalated.
    correct = [int(((inside >= t) & right).sum() + (outside < t).sum()) for t in candidates]
    best = int(np.argmax(correct))
    threshold = float(candidates[best])
    answered = inside >= threshold
    return Calibration(
        threshold=threshold,
        source=source,
        questions=len(in_scope),
        accuracy=correct[best] / (len(inside) + len(outside)),
        answer_precision=float(right[answered].mean()) if answered.any() else None,
        answered_in_scope=float(answered.mean()),
        escalated_out_of_scope=float((outside < threshold).mean()),
    )
