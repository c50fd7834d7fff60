"""The drift figures on constructed windows: each kind of drift raises its own alarm and only that one,
familiar traffic raises none, and a window too small or empty gives a clear report and no alarm."""

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from supportflow.bot.turns import TURN_SCHEMA
from supportflow.drift.figures import (
    DriftReference,
    acted_on,
    build_reference,
    compute_drift,
    fallback_turns,
    oov,
    psi,
    window_model_version,
    words,
)
from supportflow.settings import DriftThresholds
from tests.drift.conftest import LABELS, START, THRESHOLD, confident, probabilities, window

END = START + timedelta(hours=1)
THRESHOLDS = DriftThresholds()


def report_for(turns: pd.DataFrame, reference: DriftReference):
    return compute_drift(turns, reference, THRESHOLDS, START, END)


def test_the_reference_holds_what_the_monitor_compares(reference: DriftReference) -> None:
    assert reference.labels == LABELS and reference.threshold == THRESHOLD
    assert len(reference.confidences) == len(reference.predicted_intents) == 800
    assert set(reference.predicted_intents) == set(LABELS)
    assert {"card", "pin", "exchange"} <= set(reference.vocabulary)
    assert 0.0 <= reference.oov_rate < 0.15  # held-out phrasings of the same intents: mostly known words


def test_familiar_traffic_raises_no_alarm(reference: DriftReference, texts: dict) -> None:
    report = report_for(window(np.random.default_rng(1), texts, 400, START), reference)
    assert report.status == "ok" and not report.drifted and report.breaches == []
    assert report.n_turns == report.n_classified == 400
    assert report.model_versions == {"1": 400} and report.reference_version is None  # built here, not loaded from the registry
    assert report.fallback_rate == pytest.approx(report.reference_fallback_rate, abs=0.05)
    assert report.confidence_psi < 0.05 and report.confidence_ks_pvalue > 0.01
    assert report.intent_mix_js < 0.25 and report.intent_mix_js_excess < 0.05 and report.intent_mix_pvalue > 0.01
    assert report.oov_rate < report.reference_oov_rate + 0.05


def test_small_windows_of_familiar_traffic_raise_no_alarm_by_sampling_noise(reference: DriftReference, texts: dict) -> None:
    """At 60 turns PSI and the JS distance are often above their thresholds by chance; the p-values hold them back."""
    noisy = 0
    for seed in range(12):
        report = report_for(window(np.random.default_rng(100 + seed), texts, 60, START), reference)
        assert not report.drifted, report.breaches
        noisy += report.confidence_psi > THRESHOLDS.max_confidence_psi or report.intent_mix_js > 0.3
    assert noisy > 0  # the guard was needed


def test_many_intents_and_a_small_window_raise_no_alarm(texts: dict) -> None:
    """77 intents, 60 turns: the window's mix is sparse and far from the reference by sampling alone."""
    rng = np.random.default_rng(3)
    labels = [f"intent_{i:02d}" for i in range(77)]
    intents = [i for i in range(77) for _ in range(20)]
    probs = probabilities(rng, intents, rng.beta(6, 1.2, size=len(intents)), 77)
    reference = build_reference(probs, labels, THRESHOLD, ["some words"], ["some words"], "snap-77")
    shared = {label: texts[LABELS[0]] for label in labels}
    report = report_for(window(rng, shared, 60, START, intents=labels), reference)
    assert report.intent_mix_js > 0.5  # by sampling alone
    assert report.intent_mix_js_excess < THRESHOLDS.max_intent_mix_js_excess and report.intent_mix_pvalue > THRESHOLDS.significance
    assert "intent mix" not in " ".join(report.breaches)


def test_a_fallback_spike_is_drift(reference: DriftReference, texts: dict) -> None:
    rng = np.random.default_rng(2)
    confidences = np.where(rng.random(200) < 0.45, 0.2, confident(rng, 200))
    report = report_for(window(rng, texts, 200, START, confidences=confidences), reference)
    assert report.status == "drift" and report.drifted
    assert report.fallback_rate > 0.4 and report.handoff_rate == pytest.approx(report.fallback_rate)
    assert any(b.startswith("fallback rate") and "above 30%" in b for b in report.breaches)
    # nlu_fallback turns, logged at exactly the threshold, are not part of the intent mix: it has not changed.
    assert not any(b.startswith("intent mix") for b in report.breaches) and report.intent_mix_js_excess < 0.05


def test_a_confidence_shift_is_drift_without_more_fallbacks(reference: DriftReference, texts: dict) -> None:
    """All turns still above the threshold, but far less sure than at training."""
    rng = np.random.default_rng(4)
    report = report_for(window(rng, texts, 200, START, confidences=rng.uniform(0.52, 0.75, 200)), reference)
    assert report.drifted and report.fallback_rate == 0.0
    assert report.confidence_psi > 1.0 and report.confidence_ks > 0.5 and report.confidence_ks_pvalue < 1e-10
    assert report.mean_confidence < report.reference_mean_confidence - 0.15
    assert [b.split(":")[0] for b in report.breaches] == ["confidence distribution shifted"]


def test_a_new_intent_mix_is_drift(reference: DriftReference, texts: dict) -> None:
    rng = np.random.default_rng(5)
    report = report_for(window(rng, texts, 200, START, intents=["card_arrival", "change_pin"]), reference)
    assert report.drifted and report.intent_mix_js > 0.5 and report.intent_mix_js_excess > 0.3 and report.intent_mix_pvalue < 0.01
    assert [b.split(":")[0] for b in report.breaches] == ["intent mix changed"]
    top = {change.intent for change in report.intent_changes[:2]}
    assert top == {"card_arrival", "change_pin"} and all(c.window > c.reference for c in report.intent_changes[:2])


def test_new_vocabulary_is_drift(reference: DriftReference, texts: dict) -> None:
    phrases = ["can I stake my crypto wallet for yield", "my nft marketplace withdrawal is pending", "is dogecoin staking supported"]
    report = report_for(window(np.random.default_rng(6), texts, 120, START, phrases=phrases), reference)
    assert report.drifted and report.oov_rate > 0.3
    assert [b.split(" ")[0] for b in report.breaches] == ["out-of-vocabulary"]


def test_redaction_placeholders_and_numbers_are_not_out_of_vocabulary() -> None:
    assert words("Send it to <EMAIL> or call <PHONE>, card <CARD> 1234!") == ["send", "it", "to", "or", "call", "card"]
    assert oov(["send it to <EMAIL>"], {"send", "it", "to"}) == (0.0, 3)
    assert oov(["<IBAN>", "42"], {"x"}) == (None, 0)


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift() -> None:
    values = np.random.default_rng(0).uniform(size=1000)
    assert psi(values, values, 10) == pytest.approx(0.0)
    assert psi(values, values * 0.5, 10) > psi(values, values * 0.9, 10) > 0


def test_an_empty_window_is_reported_as_such(reference: DriftReference) -> None:
    empty = pd.DataFrame(columns=TURN_SCHEMA.names)
    report = compute_drift(empty, None, THRESHOLDS, START, END)
    assert report.status == "empty window" and not report.drifted and report.breaches == []
    assert report.n_turns == 0 and report.fallback_rate is None
    assert report.figures() == {"n_turns": 0.0, "n_classified": 0.0, "n_words": 0.0, "n_ratings": 0.0}
    assert "no turn" in report.headline()


def test_one_turn_gives_figures_and_no_alarm(reference: DriftReference, texts: dict) -> None:
    """A single fallback is a 100% fallback rate; with one turn that is no reason to retrain."""
    one = window(np.random.default_rng(8), texts, 1, START, confidences=np.array([0.1]))
    report = report_for(one, reference)
    assert report.status == "too few turns" and not report.drifted and report.breaches == []
    assert report.fallback_rate == 1.0
    assert "1 turns is fewer than the 50" in report.notes[0]
    assert any(note.startswith("would breach: fallback rate") for note in report.notes)


def test_fallback_definition(reference: DriftReference) -> None:
    turns = pd.DataFrame(
        {
            "intent": ["card_arrival", "nlu_fallback", "card_arrival", "change_pin", "ask_human", None, "greet", "card_arrival"],
            "confidence": [0.9, 0.5, 0.3, 0.9, 1.0, None, 1.0, 0.95],
            "route": ["kb", "handoff", "kb", "clarify", "handoff", "handoff", "dialogue", "handoff"],
        }
    )
    # confident answer; nlu_fallback; below threshold; clarify; asked for a person; already with an agent; greeting; KB had nothing
    assert fallback_turns(turns, reference).tolist() == [False, True, True, True, False, False, False, True]


def test_the_intent_mix_counts_only_catalogue_intents_the_bot_acted_on() -> None:
    """nlu_fallback is logged at exactly the threshold: counting it would shrink the mix's sample and inflate the noise test."""
    intents = ["card_arrival", "nlu_fallback", "change_pin", "greet", "card_arrival"]
    assert acted_on(intents, [0.9, 0.5, 0.4, 1.0, 0.5], 0.5, LABELS) == ["card_arrival", "card_arrival"]


def test_the_reference_is_the_model_that_served_most_turns() -> None:
    turns = pd.DataFrame({"model_version": ["1", "2", "2", None]})
    assert window_model_version(turns) == "2"
    assert window_model_version(pd.DataFrame({"model_version": [None, None]})) is None


def ratings(helpful: list[bool]) -> pd.DataFrame:
    return pd.DataFrame({"turn_id": [f"t{i}" for i in range(len(helpful))], "helpful": helpful})


def test_customers_rating_answers_unhelpful_is_drift_once_enough_have_rated(reference: DriftReference, texts: dict) -> None:
    """Familiar traffic the classifier is sure of, whose answers customers say did not help: only the ratings alarm."""
    turns = window(np.random.default_rng(1), texts, 400, START)
    unhappy = compute_drift(turns, reference, THRESHOLDS, START, END, ratings=ratings([False] * 18 + [True] * 12))
    assert unhappy.drifted and (unhappy.n_ratings, unhappy.unhelpful_rate) == (30, 0.6)
    assert unhappy.breaches == ["customers rated 60.0% of 30 rated answers unhelpful, above 50%"]
    assert unhappy.figures()["unhelpful_rate"] == 0.6 and "unhelpful share of 30 ratings | 0.600" in unhappy.markdown("run")
    few = compute_drift(turns, reference, THRESHOLDS, START, END, ratings=ratings([False] * 8 + [True] * 2))
    assert not few.drifted and few.unhelpful_rate == 0.8  # 10 ratings: reported, below min_ratings for an alarm
    content = compute_drift(turns, reference, THRESHOLDS, START, END, ratings=ratings([False] * 6 + [True] * 24))
    assert not content.drifted and content.unhelpful_rate == pytest.approx(0.2)
    unrated = report_for(turns, reference)
    assert (unrated.n_ratings, unrated.unhelpful_rate) == (0, None) and "unhelpful_rate" not in unrated.figures()
    report_only = THRESHOLDS.model_copy(update={"max_unhelpful_rate": None})
    assert not compute_drift(turns, reference, report_only, START, END, ratings=ratings([False] * 30)).drifted
