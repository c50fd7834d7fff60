"""Temperature scaling and the fallback threshold, on synthetic logits with known answers; the local metrics."""

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import f1_score

from supportflow.classifier.calibrate import (
    POINT_ESTIMATE,
    at_threshold,
    choose_threshold,
    fit_temperature,
    precision_bound,
    promises,
    risk_coverage,
)


def test_temperature_recovers_the_one_that_generated_the_labels() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 5))
    true_temperature = 2.5
    probabilities = softmax(logits / true_temperature, axis=1)
    labels = np.array([rng.choice(5, p=p) for p in probabilities])
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.1)


def test_threshold_reaches_target_precision_with_the_most_coverage() -> None:
    # Ten answers, most confident first; the wrong ones sit at 0.7 and 0.4.
    confidence = np.array([0.99, 0.95, 0.9, 0.85, 0.8, 0.7, 0.65, 0.6, 0.5, 0.4])
    correct = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1, 0], dtype=bool)
    probabilities = np.stack([confidence, (1 - confidence) / 2, (1 - confidence) / 2], axis=1)  # class 0 always on top
    labels = np.where(correct, 0, 1)
    # Precision of the top k: 1, 1, 1, 1, 1, .833, .857, .875, .889, .8
    strict = choose_threshold(probabilities, labels, target_precision=0.9)
    assert (strict.threshold, strict.coverage, strict.precision) == pytest.approx((0.8, 0.5, 1.0))
    # A lower target looks past the dip at 0.7 to the largest coverage that still meets it.
    loose = choose_threshold(probabilities, labels, target_precision=0.85)
    assert (loose.threshold, loose.coverage, loose.precision) == pytest.approx((0.5, 0.9, 8 / 9))
    assert at_threshold(probabilities, labels, loose.threshold) == loose


def test_the_risk_coverage_curve_holds_every_threshold_choose_threshold_could_pick() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=400)
    logits = rng.normal(0, 1, size=(400, 4)) + 2.5 * np.eye(4)[labels]
    probabilities = softmax(np.round(logits, 1), axis=1)  # rounded: ties in confidence, which a threshold cannot split
    curve = risk_coverage(probabilities, labels)
    assert curve["threshold"].is_monotonic_decreasing and curve["coverage"].is_monotonic_increasing
    assert curve["coverage"].iloc[-1] == 1.0 and curve["routed"].iloc[-1] == 400
    for row in curve.sample(n=20, random_state=0).itertuples():
        fixed = at_threshold(probabilities, labels, row.threshold)
        assert (fixed.coverage, fixed.precision) == pytest.approx((row.coverage, row.precision))
    for target in (0.8, 0.9, 0.97):
        chosen = choose_threshold(probabilities, labels, target)
        meeting = curve[curve["precision"] >= target]
        assert chosen.coverage == pytest.approx(meeting["coverage"].max())


def test_promises_are_thresholds_chosen_on_validation_and_scored_on_test() -> None:
    validation_probabilities = np.array([[0.95, 0.05], [0.9, 0.1], [0.8, 0.2], [0.6, 0.4]])
    validation_labels = np.array([0, 0, 0, 1])  # wrong only at 0.6: 0.8 is the threshold for any target above 3/4
    test_probabilities = np.array([[0.99, 0.01], [0.85, 0.15], [0.7, 0.3], [0.81, 0.19]])
    test_labels = np.array([0, 1, 0, 0])
    figures = promises((validation_probabilities, validation_labels), (test_probabilities, test_labels), targets=(0.97,))
    assert figures == pytest.approx({"threshold_at_097": 0.8, "coverage_at_097": 0.75, "precision_at_097": 2 / 3})
    # Three right answers vouch for no more than 0.46 at 90% confidence: a 97% promise routes no validation message,
    # and on test only the one more confident than all of them.
    bounded = promises((validation_probabilities, validation_labels), (test_probabilities, test_labels), (0.97,), 0.9)
    assert bounded["threshold_at_097"] > 0.95 and bounded["coverage_at_097"] == 0.25


def test_a_wrong_answer_budget_raises_the_threshold_past_the_precision_promise() -> None:
    # The ten answers of the first test: 90% precision routes the top five, 85% the top nine with one wrong.
    confidence = np.array([0.99, 0.95, 0.9, 0.85, 0.8, 0.7, 0.65, 0.6, 0.5, 0.4])
    correct = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1, 0], dtype=bool)
    probabilities = np.stack([confidence, (1 - confidence) / 2, (1 - confidence) / 2], axis=1)
    labels = np.where(correct, 0, 1)
    loose = choose_threshold(probabilities, labels, target_precision=0.85)
    assert loose.wrong == pytest.approx(0.1)  # one of the ten messages answered wrongly
    # One wrong answer in ten, counted as if an eleventh message had been wrong too: (10 * 0.1 + 1) / 11 = 0.18.
    within = choose_threshold(probabilities, labels, target_precision=0.85, max_wrong_answers=0.2)
    assert (within.threshold, within.wrong) == (loose.threshold, loose.wrong)
    strict = choose_threshold(probabilities, labels, target_precision=0.85, max_wrong_answers=0.15)
    assert (strict.threshold, strict.coverage, strict.wrong) == pytest.approx((0.8, 0.5, 0.0))  # (0 + 1) / 11 = 0.09
    # No threshold can promise fewer than the one imagined wrong answer: nothing is routed.
    assert choose_threshold(probabilities, labels, target_precision=0.85, max_wrong_answers=0.05).coverage == 0.0
    assert at_threshold(probabilities, labels, loose.threshold).wrong == pytest.approx(0.1)


def test_the_wrong_answer_budget_holds_on_new_messages_from_small_validation_splits() -> None:
    """The bound is what conformal risk control promises: over many validation draws, the expected share of new
    messages answered wrongly stays within the budget, even where each split is too small to measure it. Choosing on
    the plain validation share (no extra message) breaks it on the same draws."""
    rng = np.random.default_rng(7)
    budget, n, intents = 0.05, 60, 4

    def draw(size: int) -> tuple[np.ndarray, np.ndarray]:
        logits = rng.normal(0, 1.5, size=(size, intents))
        probabilities = softmax(logits, axis=1)  # calibrated by construction: each label is drawn from its row
        return probabilities, np.array([rng.choice(intents, p=p) for p in probabilities])

    test_probabilities, test_labels = draw(20_000)
    bounded, plain = [], []
    for _ in range(300):
        probabilities, labels = draw(n)
        chosen = choose_threshold(probabilities, labels, target_precision=0.0, max_wrong_answers=budget)
        bounded.append(at_threshold(test_probabilities, test_labels, chosen.threshold).wrong)
        curve = risk_coverage(probabilities, labels)
        naive = curve[curve["wrong"] <= budget]["threshold"].min()
        plain.append(at_threshold(test_probabilities, test_labels, naive).wrong)
    assert np.mean(bounded) <= budget
    assert np.mean(plain) > budget


def test_the_precision_bound_is_clopper_pearsons_and_raises_the_threshold() -> None:
    # All n right: the exact lower bound solves p ** n = 1 - confidence.
    assert precision_bound(np.array([5.0]), np.array([5.0]), 0.9)[0] == pytest.approx(0.1 ** (1 / 5))
    assert precision_bound(np.array([0.0, 3.0]), np.array([4.0, 4.0]), POINT_ESTIMATE).tolist() == [0.0, 0.75]
    assert precision_bound(np.array([0.0]), np.array([4.0]), 0.9)[0] == 0.0
    bounds = precision_bound(np.array([90.0, 900.0]), np.array([100.0, 1000.0]), 0.9)
    assert bounds[0] < bounds[1] < 0.9  # more messages vouch for more of the same share, never all of it
    # The ten answers of the first test: 5 of 5 right at 0.8 vouch for 0.63 at 90%, 8 of 9 at 0.5 for 0.68 only.
    confidence = np.array([0.99, 0.95, 0.9, 0.85, 0.8, 0.7, 0.65, 0.6, 0.5, 0.4])
    correct = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1, 0], dtype=bool)
    probabilities = np.stack([confidence, (1 - confidence) / 2, (1 - confidence) / 2], axis=1)
    labels = np.where(correct, 0, 1)
    assert choose_threshold(probabilities, labels, target_precision=0.6).coverage == 1.0
    bounded = choose_threshold(probabilities, labels, target_precision=0.6, confidence=0.9)
    assert (bounded.threshold, bounded.coverage, bounded.precision) == pytest.approx((0.5, 0.9, 8 / 9))
    assert choose_threshold(probabilities, labels, target_precision=0.7, confidence=0.9).coverage == 0.0


def test_the_bounded_precision_holds_on_new_messages_as_often_as_its_confidence() -> None:
    """Over many validation draws of a few hundred messages, the threshold chosen at the validation precision itself
    keeps the target on new messages about half the time; bounded at 90% confidence, about nine times in ten."""
    rng = np.random.default_rng(11)
    target, n, intents = 0.9, 300, 4

    def draw(size: int) -> tuple[np.ndarray, np.ndarray]:
        probabilities = softmax(rng.normal(0, 2.5, size=(size, intents)), axis=1)
        return probabilities, np.array([rng.choice(intents, p=p) for p in probabilities])

    test_probabilities, test_labels = draw(20_000)
    kept: dict[float, list[bool]] = {POINT_ESTIMATE: [], 0.9: []}
    for _ in range(200):
        probabilities, labels = draw(n)
        for confidence, outcomes in kept.items():
            chosen = choose_threshold(probabilities, labels, target, confidence=confidence)
            outcomes.append(at_threshold(test_probabilities, test_labels, chosen.threshold).precision >= target)
    assert np.mean(kept[0.9]) >= 0.85
    assert np.mean(kept[POINT_ESTIMATE]) <= 0.7


def test_unreachable_precision_routes_nothing() -> None:
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2]])
    chosen = choose_threshold(probabilities, np.array([1, 1]), target_precision=0.9)
    assert chosen.coverage == 0.0 and chosen.threshold > 0.9
    assert at_threshold(probabilities, np.array([1, 1]), chosen.threshold).coverage == 0.0


def test_local_metric_modules_load_offline_and_agree_with_sklearn() -> None:
    from supportflow.classifier.evaluate_metrics import load_metric

    predictions, references = [0, 1, 2, 2, 1, 0], [0, 1, 1, 2, 1, 2]
    assert load_metric("accuracy").compute(predictions=predictions, references=references)["accuracy"] == pytest.approx(4 / 6)
    assert load_metric("macro_f1").compute(predictions=predictions, references=references)["macro_f1"] == pytest.approx(
        f1_score(references, predictions, average="macro")
    )
    report = load_metric("per_intent").compute(predictions=predictions, references=references, labels=[0, 1, 2])
    assert report["support"] == [1, 3, 2] and report["recall"][1] == pytest.approx(2 / 3) and report["precision"][0] == 0.5
