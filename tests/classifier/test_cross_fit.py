"""Out-of-fold calibration for a small desk: every training and validation message is read by a model that never saw
it, and the threshold and the readers' weights are chosen on those readings."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import supportflow.classifier.cross_fit as cross_fit
from supportflow.classifier.base_weights import BaseModelChoice
from supportflow.classifier.build import evaluate_classifier
from supportflow.classifier.calibrate import choose_threshold
from supportflow.classifier.cross_fit import CrossFitChoice, fold_of
from supportflow.classifier.fine_tune import FineTuned, fine_tune
from supportflow.classifier.splits import LabelledSplits, check_training_data
from supportflow.ingest.tickets import wording_keys
from supportflow.settings import Settings, TrainingProfile
from tests.classifier.conftest import TINY_INTENTS, TINY_PROFILE, tiny_rows


def test_folds_are_dealt_per_intent_so_each_fold_s_training_part_keeps_every_intent() -> None:
    labels = np.array([0] * 12 + [1] * 5 + [2] * 2)
    wordings = np.arange(len(labels))  # every message says something of its own
    fold = fold_of(labels, wordings, 5, seed=13)
    assert np.array_equal(fold, fold_of(labels, wordings, 5, seed=13))  # seeded
    for label, size in ((0, 12), (1, 5), (2, 2)):
        counts = np.bincount(fold[labels == label], minlength=5)
        assert counts.max() - counts.min() <= 1 and counts.sum() == size  # as even as the intent allows
        for k in range(5):
            assert (fold[labels == label] != k).any()  # the other folds still hold the intent


def test_messages_that_say_the_same_thing_share_a_fold() -> None:
    """A message sent by many customers is read out of fold only by a model that saw none of its copies."""
    texts = pd.Series(["Where is my refund?", "where is my refund", "WHERE IS MY REFUND!!"] * 4 + ["refund status please"] * 3)
    texts = pd.concat([texts, pd.Series([f"reset my password number {i}" for i in range(10)])], ignore_index=True)
    labels = np.array([0] * 15 + [1] * 10)
    wordings = wording_keys(texts)
    fold = fold_of(labels, wordings, 5, seed=3)
    for wording in np.unique(wordings):
        assert len(set(fold[wordings == wording])) == 1
    assert len(set(fold[labels == 0])) == 2  # two wordings: two folds, and the other three still train on the intent
    counts = np.bincount(fold[labels == 1], minlength=5)
    assert counts.min() == counts.max() == 2


def test_only_a_desk_no_larger_than_the_setting_is_cross_fitted() -> None:
    settings = Settings(cross_fit_folds=5, cross_fit_max_examples=2000, train_threads=2)
    assert CrossFitChoice.of(settings, 2000) == CrossFitChoice(5, 2, "cpu")
    assert CrossFitChoice.of(settings, 2001) is None
    assert CrossFitChoice.of(settings.model_copy(update={"cross_fit_folds": 0}), 100) is None


@pytest.fixture
def small_desk() -> LabelledSplits:
    rows = tiny_rows().rename(columns={"category": "intent"}).sample(frac=1.0, random_state=0)
    rows = rows.groupby("intent", group_keys=False).head(40)
    test = rows.groupby("intent", group_keys=False).head(8)
    validation = rows.drop(test.index).groupby("intent", group_keys=False).head(6)
    return check_training_data(rows.drop(test.index).drop(validation.index), validation, test, tuple(TINY_INTENTS), 2, "small desk")


def test_the_threshold_is_chosen_on_every_message_read_by_a_model_that_never_saw_it(
    small_desk: LabelledSplits, tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts: list[LabelledSplits] = []

    def recording(base: str, part: LabelledSplits, *args: object, **kwargs: object) -> FineTuned:
        parts.append(part)
        return fine_tune(base, part, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cross_fit, "fine_tune", recording)
    profile = TrainingProfile(**{**TINY_PROFILE, "epochs": 3})  # what is checked is who reads what, not how well
    tuned = fine_tune(str(tiny_base), small_desk, profile, 1, tmp_path / "model")
    choice = BaseModelChoice(name="tiny", location=str(tiny_base), source="local")
    built = evaluate_classifier(tuned, small_desk, choice, profile, 0.9, "snap-small", cross_fit=CrossFitChoice(3), max_wrong_answers=0.1)

    pool = len(small_desk.train) + len(small_desk.validation)
    assert len(parts) == 3
    held = [set(part.validation.index) for part in parts]
    assert all(not (set(part.train.index) & out) for part, out in zip(parts, held, strict=True))  # never read what it learnt
    assert set().union(*held) == set(range(pool)) and sum(len(out) for out in held) == pool  # each message read once
    assert all(set(part.train["intent"]) == set(TINY_INTENTS) for part in parts)
    assert len(built.validation_labels) == pool and built.card.cross_fit_folds == 3
    again = choose_threshold(built.validation_probabilities, built.validation_labels, 0.9, 0.1)
    assert built.card.threshold == again.threshold  # chosen on the out-of-fold readings, not the 48 validation messages
    assert built.test_probabilities.shape == (len(small_desk.test), len(TINY_INTENTS))  # the served model is the one trained
