"""The review queue's pick: the most uncertain first, and never two copies of one question."""

import numpy as np
import pytest

from supportflow.review.selection import SelectionError, margin_uncertainty, ranking_uncertainty, select_diverse


def unit(rows: list[list[float]]) -> np.ndarray:
    vectors = np.asarray(rows, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_the_margin_ranks_a_torn_model_above_a_sure_one_whatever_the_top_probability() -> None:
    probabilities = np.array([[0.45, 0.44, 0.11], [0.45, 0.05, 0.50], [0.95, 0.03, 0.02], [0.6, 0.2, 0.2]])
    scores = margin_uncertainty(probabilities)
    assert scores == pytest.approx([0.99, 0.95, 0.08, 0.6])
    assert list(np.argsort(-scores)) == [0, 1, 3, 2]
    assert ranking_uncertainty([0.2, 0.45, 0.44]) == pytest.approx(0.99)  # a ranking in any order


def test_the_most_uncertain_are_picked_first_when_all_differ() -> None:
    embeddings = np.eye(5, dtype=np.float32)  # five unrelated questions
    assert select_diverse(np.array([0.1, 0.9, 0.5, 0.7, 0.3]), embeddings, 3) == [1, 3, 2]


def test_a_near_copy_of_a_picked_question_is_skipped_for_the_next_distinct_one() -> None:
    # 0, 1 and 2 are one question reworded; 3 and 4 differ; the copies are the most uncertain
    embeddings = unit([[1, 0, 0], [0.99, 0.05, 0], [0.98, 0, 0.05], [0, 1, 0], [0, 0, 1]])
    uncertainty = np.array([0.99, 0.98, 0.97, 0.5, 0.4])
    assert select_diverse(uncertainty, embeddings, 3) == [0, 3, 4]
    assert select_diverse(uncertainty, embeddings, 10) == [0, 3, 4]  # a shorter queue rather than copies


def test_exact_duplicates_are_never_picked_twice() -> None:
    embeddings = unit([[1, 2, 3]] * 4 + [[3, -2, 1]])
    assert select_diverse(np.array([0.9, 0.9, 0.8, 0.7, 0.1]), embeddings, 5) == [0, 4]


@pytest.mark.parametrize(
    ("uncertainty", "embeddings", "limit", "similarity", "message"),
    [
        (np.zeros(2), np.eye(3), 1, 0.9, "2 uncertainty scores for 3 embeddings"),
        (np.zeros(3), np.eye(3), -1, 0.9, "limit must be >= 0"),
        (np.zeros(3), np.eye(3), 1, 1.5, "max_similarity is a cosine"),
    ],
)
def test_bad_input_is_refused_with_the_reason(
    uncertainty: np.ndarray, embeddings: np.ndarray, limit: int, similarity: float, message: str
) -> None:
    with pytest.raises(SelectionError, match=message):
        select_diverse(uncertainty, embeddings, limit, similarity)
