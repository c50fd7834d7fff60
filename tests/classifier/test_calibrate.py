"""Temperature scaling and the fallback threshold, on synthetic logits with known answers; the local metrics."""

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import f1_score

from supportflow.classifier.calibrate import at_threshold, choose_threshold, fit_temperature


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
