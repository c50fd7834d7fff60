"""Make confidences mean what they say, then pick the fallback threshold from them.

Temperature scaling (one scalar dividing the logits) is fitted on the validation split by minimising
negative log-likelihood; it leaves the ranking unchanged. The threshold is then the lowest confidence
at which the routed answers keep both of the desk's promises on validation; below it the bot asks
or hands off. Coverage is the share of messages it routes. (A small desk's "validation" here is every training
and validation message read out of fold: `cross_fit.py`.)

The two promises are read by different people. Precision is the classifier's: of the answers given, how many are
right. A desk counts wrong answers among all its customers: at 97% precision and 90% coverage, 2.7 in every 100
messages get another intent's answer. `max_wrong_answers` bounds that share directly, with conformal risk control
(Angelopoulos et al., "Conformal Risk Control", ICLR 2024): a wrong answer can only disappear as the threshold
rises, so the lowest threshold whose validation share, counted as if one more message had been wrong,
`(n * share + 1) / (n + 1)`, stays within the budget keeps the expected share on new messages within it. On a
small validation split the extra message is what keeps the promise honest; the messages above the old threshold
and below the new one are offered as a choice rather than answered.

Precision is bounded too. The lowest threshold whose validation precision merely reaches the target is the most
flattering point of a noisy curve: on new messages it keeps the target about half the time (docs/classifier.md,
"The precision promise, bounded"). With `confidence` the routed answers' precision must reach the target at its
one-sided Clopper-Pearson lower bound instead, the exact binomial bound Learn then Test (Angelopoulos et al., 2021)
builds its tests from (without its correction for looking at every threshold): at 0.9 the target held on new
messages about nine times in ten wherever it was measured. What it costs is
coverage, and most on a small desk, whose few validation messages cannot vouch for a high precision; the messages it
no longer answers alone are offered as a choice first.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from scipy.stats import beta


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    coverage: float
    precision: float
    wrong: float  # the share of all messages routed to a wrong answer: (1 - precision) * coverage


NO_WRONG_ANSWER_BUDGET = 1.0  # the precision alone chooses the threshold
POINT_ESTIMATE = 0.0  # the precision bound is the validation precision itself, as before the bound existed


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises validation NLL (searched on a log scale)."""
    labels = np.asarray(labels)

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(labels)), labels].mean())

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def precision_bound(correct: np.ndarray, routed: np.ndarray, confidence: float) -> np.ndarray:
    """The precision that `correct` right answers among `routed` vouch for with `confidence`: the one-sided
    Clopper-Pearson lower bound, or the share itself at `POINT_ESTIMATE`."""
    correct, routed = np.asarray(correct, dtype=float), np.asarray(routed, dtype=float)
    if confidence == POINT_ESTIMATE:
        return correct / routed
    # No right answer vouches for nothing; beta.ppf is only read where there is one (its first shape must be positive).
    return np.where(correct > 0, beta.ppf(1.0 - confidence, np.maximum(correct, 1.0), routed - correct + 1.0), 0.0)


def choose_threshold(
    probabilities: np.ndarray,
    labels: np.ndarray,
    target_precision: float,
    max_wrong_answers: float = NO_WRONG_ANSWER_BUDGET,
    confidence: float = POINT_ESTIMATE,
) -> ThresholdChoice:
    """Largest coverage whose routed answers (confidence >= threshold) reach the target precision, bounded with
    `confidence`, and whose wrong answers, bounded as the module says, stay within `max_wrong_answers` of all
    messages. The choice reports the validation precision itself, not its bound.

    When no threshold keeps both, nothing is routed (threshold above every confidence, coverage 0):
    the product promise wins over coverage.
    """
    curve = risk_coverage(probabilities, labels)
    n = len(labels)
    bounded_wrong = (curve["wrong"] * n + 1) / (n + 1)
    bounded_precision = precision_bound(np.rint(curve["precision"] * curve["routed"]), curve["routed"], confidence)
    meeting = curve[(bounded_precision >= target_precision) & (bounded_wrong <= max_wrong_answers)]
    if meeting.empty:
        return ThresholdChoice(threshold=float(np.nextafter(curve["threshold"].iloc[0], np.inf)), coverage=0.0, precision=1.0, wrong=0.0)
    chosen = meeting.iloc[-1]
    return ThresholdChoice(
        threshold=float(chosen["threshold"]),
        coverage=float(chosen["coverage"]),
        precision=float(chosen["precision"]),
        wrong=float(chosen["wrong"]),
    )


def at_threshold(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> ThresholdChoice:
    """Coverage, precision and wrong answers that a fixed threshold gives on another split (the test split)."""
    confidence = probabilities.max(axis=1)
    routed = confidence >= threshold
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    precision = float(correct[routed].mean()) if routed.any() else 1.0
    return ThresholdChoice(threshold=threshold, coverage=float(routed.mean()), precision=precision, wrong=float((routed & ~correct).mean()))


def risk_coverage(probabilities: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Coverage and precision at every threshold a split can tell apart (each distinct top confidence): the whole
    trade-off a desk chooses its promise from, of which the chosen threshold is one row."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    order = np.argsort(-confidence, kind="stable")
    sorted_confidence = confidence[order]
    routed = np.arange(1, len(order) + 1)
    precision = np.cumsum(correct[order]) / routed
    ends = np.r_[sorted_confidence[1:] != sorted_confidence[:-1], True]  # a threshold routes every tie with it
    wrong = np.cumsum(~correct[order]) / len(order)  # the share of all messages answered wrongly
    return pd.DataFrame(
        {
            "threshold": sorted_confidence[ends],
            "coverage": routed[ends] / len(order),
            "precision": precision[ends],
            "wrong": wrong[ends],
            "routed": routed[ends],
        }
    )


REPORTED_PRECISIONS = (0.90, 0.95, 0.97, 0.99)  # the promises a desk commonly weighs, logged whatever the target


def promises(
    validation: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    targets: tuple[float, ...] = REPORTED_PRECISIONS,
    confidence: float = POINT_ESTIMATE,
) -> dict[str, float]:
    """For each target precision, the threshold chosen on validation (bounded with `confidence`, as the served one
    is) and what it gives on test: the honest figure, since a threshold picked on the split it is scored on flatters
    itself."""
    figures: dict[str, float] = {}
    for target in targets:
        key = f"{round(target * 100):03d}"
        chosen = choose_threshold(*validation, target, confidence=confidence)
        held_out = at_threshold(*test, chosen.threshold)
        figures[f"threshold_at_{key}"] = chosen.threshold
        figures[f"coverage_at_{key}"] = held_out.coverage
        figures[f"precision_at_{key}"] = held_out.precision
    return figures
