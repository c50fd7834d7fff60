"""Which messages are worth an agent's label: the ones the model is least sure of, and not twenty copies of one.

Uncertainty alone picks clusters: the model is unsure about the same confusion again and again, so the most
uncertain twenty are often one question phrased twenty ways, and the labels after the first teach little. The
pick here walks the candidates from the most uncertain down and skips any whose embedding is within
`max_similarity` (cosine) of one already picked. The same function chooses the served review queue and the
benchmark's rounds (bench/active_learning.py), so the benchmark measures what agents are shown.

numpy only: the bot service reads what this picks and must stay light (tests/bot/test_service_imports.py).
"""

from collections.abc import Sequence

import numpy as np

from supportflow.errors import SupportflowError

DEFAULT_MAX_SIMILARITY = 0.9  # MiniLM cosine above which two messages are the same question reworded


class SelectionError(SupportflowError):
    """Inputs the selection cannot rank (mismatched lengths, a bad limit or similarity)."""


def margin_uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """1 - (top probability - second), one per row: a model torn between two intents scores near 1, a sure one near 0.

    The margin, not the top probability alone: 0.45 against 0.44 is a coin toss that 0.45 against 0.05 is not."""
    if probabilities.ndim != 2 or probabilities.shape[1] < 1:
        raise SelectionError(f"probabilities must be a 2-D array with a column per intent; got shape {probabilities.shape}")
    if probabilities.shape[1] == 1:
        return 1.0 - probabilities[:, 0]
    top_two = -np.partition(-probabilities, 1, axis=1)[:, :2]
    return 1.0 - (top_two[:, 0] - top_two[:, 1])


def ranking_uncertainty(confidences: Sequence[float]) -> float:
    """The same score from a turn's ranking (its intents' confidences, any order)."""
    if not len(confidences):
        raise SelectionError("a ranking needs at least one confidence")
    return float(margin_uncertainty(np.asarray([sorted(confidences, reverse=True)[:2]], dtype=np.float64))[0])


def select_diverse(
    uncertainty: np.ndarray, embeddings: np.ndarray, limit: int, max_similarity: float = DEFAULT_MAX_SIMILARITY
) -> list[int]:
    """Up to `limit` row indices, most uncertain first, none within `max_similarity` of one picked before it.

    Embeddings must be unit vectors (a dot product is then the cosine). Fewer than `limit` come back when the rest
    are all near copies of what was picked: a shorter queue, rather than a padded one that wastes agents' time."""
    if len(uncertainty) != len(embeddings):
        raise SelectionError(f"{len(uncertainty)} uncertainty scores for {len(embeddings)} embeddings")
    if limit < 0:
        raise SelectionError(f"limit must be >= 0; got {limit}")
    if not -1.0 <= max_similarity <= 1.0:
        raise SelectionError(f"max_similarity is a cosine, in [-1, 1]; got {max_similarity}")
    order = np.argsort(-np.asarray(uncertainty, dtype=np.float64), kind="stable")
    vectors = np.asarray(embeddings, dtype=np.float32)
    closest = np.full(len(vectors), -np.inf, dtype=np.float32)  # each row's highest similarity to a picked row
    picked: list[int] = []
    for row in order:
        if len(picked) >= limit:
            break
        if closest[row] >= max_similarity:
            continue
        picked.append(int(row))
        np.maximum(closest, vectors @ vectors[row], out=closest)
    return picked
