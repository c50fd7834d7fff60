"""Drift: how far the bot's recent traffic has moved from what its classifier was trained and calibrated on.

Plain functions over the turn log (`supportflow.bot.turns`) and a training reference logged with each
model (`build_reference`); the `drift_monitor` flow only reads, calls and records. Every figure and
the reasons for the thresholds are in docs/drift.md.

Two facts of the served bot shape the definitions:
- Rasa's `FallbackClassifier` replaces a prediction below the model's threshold with `nlu_fallback`
  and logs the threshold as its confidence, so the real low confidences never reach the turn log.
  Confidences below the threshold are therefore censored at the threshold on both sides of every
  comparison, and the intent mix compares only the intents the bot acted on (at or above it).
- Small windows are noisy: on 50 turns, PSI over ten bins averages ~0.2 and the Jensen-Shannon distance
  over 77 intents is ~0.6 by sampling alone. A statistical figure alarms only with an effect size above
  its threshold *and* a p-value below the significance level, and the intent mix's effect size is the
  distance beyond the median distance between samples of the reference of the same sizes.
"""

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from scipy.stats import ks_2samp

from supportflow.settings import DriftThresholds

REFERENCE_ARTIFACT = "reference/drift_reference.json"  # inside each training run
FALLBACK_INTENT = "nlu_fallback"  # Rasa's name for "below the threshold"
ASK_HUMAN = "ask_human"  # a customer asking for a person is not the model failing
PLACEHOLDER = re.compile(r"<[A-Z_]+>")  # redaction placeholders (<EMAIL>, <CARD>...): never out of vocabulary
WORD = re.compile(r"[a-z]+")  # digits and punctuation are left out: amounts and dates are always new
NULL_DRAWS = 2000  # multinomial draws for the intent-mix p-value

Status = Literal["empty window", "too few turns", "ok", "drift"]


class DriftReference(BaseModel):
    """What a model saw at training time, logged in its MLflow run as `reference/drift_reference.json`."""

    snapshot_id: str
    labels: list[str]
    threshold: float
    confidences: list[float] = Field(description="Calibrated top confidence of each validation text.")
    predicted_intents: list[str] = Field(description="Top intent of each validation text, in the same order.")
    vocabulary: list[str] = Field(description="Sorted words of the training split's texts.")
    oov_rate: float = Field(description="The validation split's out-of-vocabulary rate against `vocabulary`.")
    model_version: str | None = None  # set when loaded from the registry
    run_id: str | None = None


class IntentShare(BaseModel):
    intent: str
    window: float
    reference: float

    @property
    def change(self) -> float:
        return self.window - self.reference


class DriftReport(BaseModel):
    window_start: datetime
    window_end: datetime
    status: Status
    drifted: bool
    breaches: list[str] = Field(description="Why the alarm is raised, one sentence per threshold crossed.")
    notes: list[str] = Field(default_factory=list)
    n_turns: int
    n_classified: int = Field(0, description="Turns with a classifier confidence (a catalogue intent or nlu_fallback).")
    model_versions: dict[str, int] = Field(default_factory=dict, description="Turns per model version that served them.")
    reference_version: str | None = None
    reference_run_id: str | None = None
    fallback_rate: float | None = None
    reference_fallback_rate: float | None = None
    handoff_rate: float | None = None
    mean_confidence: float | None = None
    reference_mean_confidence: float | None = None
    confidence_psi: float | None = None
    confidence_ks: float | None = None
    confidence_ks_pvalue: float | None = None
    intent_mix_js: float | None = None
    intent_mix_js_excess: float | None = Field(None, description="The JS distance minus its median between samples of the reference.")
    intent_mix_pvalue: float | None = None
    intent_changes: list[IntentShare] = Field(default_factory=list, description="The largest changes of share, largest first.")
    oov_rate: float | None = None
    reference_oov_rate: float | None = None
    n_words: int = 0
    n_ratings: int = Field(0, description="Customers' ratings given in the window (each rated turn's latest).")
    unhelpful_rate: float | None = Field(None, description="Share of those ratings that said the answer did not help.")
    thresholds: DriftThresholds
    retraining: str = "not requested"

    FIGURES: ClassVar[tuple[str, ...]] = (
        "n_turns",
        "n_classified",
        "fallback_rate",
        "reference_fallback_rate",
        "handoff_rate",
        "mean_confidence",
        "reference_mean_confidence",
        "confidence_psi",
        "confidence_ks",
        "confidence_ks_pvalue",
        "intent_mix_js",
        "intent_mix_js_excess",
        "intent_mix_pvalue",
        "oov_rate",
        "reference_oov_rate",
        "n_words",
        "n_ratings",
        "unhelpful_rate",
    )

    def figures(self) -> dict[str, float]:
        """The numeric figures that exist for this window (an empty window has only its counts)."""
        values = {name: getattr(self, name) for name in self.FIGURES}
        return {name: float(value) for name, value in values.items() if value is not None}

    def headline(self) -> str:
        window = f"{self.window_start:%Y-%m-%d %H:%M}-{self.window_end:%H:%M} UTC"
        if self.status == "drift":
            return f"drift in {window} ({self.n_turns} turns): " + "; ".join(self.breaches)
        return f"{self.status} in {window} ({self.n_turns} turns)" + (f": {self.notes[0]}" if self.notes else "")

    def lines(self) -> list[str]:
        lines = [self.headline()] + [f"  - {line}" for line in self.breaches + self.notes]
        if self.n_turns:
            figures = self.figures()
            shown = (
                "fallback_rate",
                "handoff_rate",
                "confidence_psi",
                "confidence_ks_pvalue",
                "intent_mix_js_excess",
                "oov_rate",
                "unhelpful_rate",
            )
            lines.append("  " + ", ".join(f"{name} {figures[name]:.3f}" for name in shown if name in figures))
        return [*lines, f"retraining: {self.retraining}"]

    def markdown(self, run_id: str) -> str:
        """The Prefect artifact: the verdict first, then the figures against their thresholds."""
        lines = [f"**{self.status}**: {self.headline()}", "", f"MLflow run `{run_id}`", ""]
        lines += [f"- {breach}" for breach in self.breaches] + [f"- {note}" for note in self.notes]
        lines += ["", "| figure | window | reference |", "|---|---|---|"]
        pairs = [
            ("fallback rate", self.fallback_rate, self.reference_fallback_rate),
            ("handoff rate", self.handoff_rate, None),
            ("mean confidence", self.mean_confidence, self.reference_mean_confidence),
            ("out-of-vocabulary rate", self.oov_rate, self.reference_oov_rate),
            ("confidence PSI", self.confidence_psi, None),
            ("confidence KS (p)", self.confidence_ks, self.confidence_ks_pvalue),
            ("intent mix JS distance (p)", self.intent_mix_js, self.intent_mix_pvalue),
            ("intent mix JS beyond sampling noise", self.intent_mix_js_excess, None),
            (f"unhelpful share of {self.n_ratings} ratings", self.unhelpful_rate, None),
        ]
        for name, value, other in pairs:
            lines.append(f"| {name} | {'-' if value is None else f'{value:.3f}'} | {'-' if other is None else f'{other:.3g}'} |")
        lines.append(f"\nturns {self.n_turns} (classified {self.n_classified}) by model version {self.model_versions or '-'}")
        lines.append(f"\nretraining: {self.retraining}")
        return "\n".join(lines)


def words(text: str) -> list[str]:
    """Lower-case word tokens, with redaction placeholders removed first."""
    return WORD.findall(PLACEHOLDER.sub(" ", text).lower())


def oov(texts: Iterable[str], vocabulary: set[str]) -> tuple[float | None, int]:
    """(share of word tokens not in the vocabulary, number of word tokens); None when there is no word."""
    tokens = [word for text in texts for word in words(text)]
    if not tokens:
        return None, 0
    return sum(word not in vocabulary for word in tokens) / len(tokens), len(tokens)


def build_reference(
    validation_probabilities: np.ndarray,
    labels: Sequence[str],
    threshold: float,
    train_texts: Iterable[str],
    validation_texts: Iterable[str],
    snapshot_id: str,
) -> DriftReference:
    """The reference a model is monitored against: its calibrated behaviour on held-out validation text."""
    vocabulary = sorted({word for text in train_texts for word in words(text)})
    rate, _ = oov(validation_texts, set(vocabulary))
    return DriftReference(
        snapshot_id=snapshot_id,
        labels=list(labels),
        threshold=float(threshold),
        confidences=[round(float(p), 5) for p in validation_probabilities.max(axis=1)],
        predicted_intents=[labels[i] for i in validation_probabilities.argmax(axis=1)],
        vocabulary=vocabulary,
        oov_rate=rate or 0.0,
    )


def psi(reference: np.ndarray, window: np.ndarray, bins: int, epsilon: float = 1e-4) -> float:
    """Population stability index over fixed equal-width bins on [0, 1]; empty bins get `epsilon`."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    expected = np.histogram(np.clip(reference, 0, 1), edges)[0] / len(reference)
    actual = np.histogram(np.clip(window, 0, 1), edges)[0] / len(window)
    expected, actual = np.maximum(expected, epsilon), np.maximum(actual, epsilon)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def js_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance (base 2, in [0, 1]) between the rows of p and q."""
    p, q = np.atleast_2d(p), np.atleast_2d(q)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log2(a / m), 0.0).sum(axis=1)

    return np.sqrt(np.clip((kl(p) + kl(q)) / 2, 0, 1))


def intent_mix(intents: Iterable[str], labels: Sequence[str]) -> np.ndarray:
    counts = Counter(intents)
    total = sum(counts[label] for label in labels)
    return np.array([counts[label] / total if total else 0.0 for label in labels])


def intent_mix_shift(window: Sequence[str], reference: Sequence[str], labels: Sequence[str], seed: int = 0) -> tuple[float, float, float]:
    """(JS distance, its excess over sampling noise, p-value). Noise: pairs of samples of the same two sizes,
    both drawn from the reference mix; the excess is the distance minus their median distance, the p-value
    the share of them at least as far apart. A small window's sparse mix, far from the reference by
    sampling alone, thus raises no alarm."""
    expected, observed = intent_mix(reference, labels), intent_mix(window, labels)
    distance = float(js_distance(observed, expected)[0])
    rng = np.random.default_rng(seed)
    window_draws = rng.multinomial(len(window), expected, size=NULL_DRAWS) / len(window)
    reference_draws = rng.multinomial(len(reference), expected, size=NULL_DRAWS) / len(reference)
    null = js_distance(window_draws, reference_draws)
    return distance, distance - float(np.median(null)), float((1 + np.sum(null >= distance - 1e-12)) / (1 + NULL_DRAWS))


def fallback_turns(turns: pd.DataFrame, reference: DriftReference) -> pd.Series:
    """A turn is a fallback when the bot could not act on its own understanding of the message:
    Rasa's `nlu_fallback`, a catalogue intent below the model's threshold, a clarifying question, or a
    handoff of a classified message that was not an explicit ask for a person. Turns without an intent
    (a conversation already with an agent, a service down) are not the model's doing and do not count.
    """
    intent, route = turns["intent"], turns["route"]
    below = intent.isin(reference.labels) & (turns["confidence"] < reference.threshold)
    handed_off = (route == "handoff") & intent.notna() & (intent != ASK_HUMAN)
    return (intent == FALLBACK_INTENT) | below | (route == "clarify") | handed_off


def classified(turns: pd.DataFrame, reference: DriftReference) -> pd.DataFrame:
    """Turns that carry a classifier decision: a catalogue intent or nlu_fallback, with a confidence."""
    decided = turns["intent"].isin([*reference.labels, FALLBACK_INTENT]) & turns["confidence"].notna()
    return turns[decided]


def censored(confidences: Iterable[float], threshold: float) -> np.ndarray:
    """Confidences with everything below the threshold put at the threshold, as Rasa logs nlu_fallback."""
    return np.maximum(np.asarray(list(confidences), dtype=float), threshold)


def acted_on(intents: Sequence[str], confidences: Sequence[float], threshold: float, labels: Sequence[str]) -> list[str]:
    """The catalogue intents the bot acted on; `nlu_fallback`, logged at exactly the threshold, is not one."""
    known = set(labels)
    return [intent for intent, confidence in zip(intents, confidences, strict=True) if confidence >= threshold and intent in known]


def compute_drift(
    turns: pd.DataFrame,
    reference: DriftReference | None,
    thresholds: DriftThresholds,
    start: datetime,
    end: datetime,
    top_changes: int = 8,
    ratings: pd.DataFrame | None = None,
) -> DriftReport:
    """The drift report of one window. No alarm is raised on fewer than `thresholds.min_turns` turns, nor on the
    unhelpful share of fewer than `thresholds.min_ratings` ratings. `ratings`: the customers' ratings given in the
    window (supportflow/bot/feedback.py), one per rated turn: an answer customers say did not help is the bot
    failing even where the classifier was sure of itself."""
    versions = turns["model_version"].fillna("unknown").value_counts()
    base = {
        "window_start": start,
        "window_end": end,
        "n_turns": len(turns),
        "model_versions": {str(k): int(v) for k, v in versions.items()},
        "thresholds": thresholds,
    }
    if turns.empty:
        return DriftReport(**base, status="empty window", drifted=False, breaches=[], notes=["no turn was logged in the window"])
    if reference is None:
        raise ValueError("a window with turns needs the served model's reference")

    n = len(turns)
    threshold = reference.threshold
    decided = classified(turns, reference)
    window_confidences = censored(decided["confidence"], threshold)
    reference_confidences = censored(reference.confidences, threshold)
    figures: dict[str, object] = {
        "reference_version": reference.model_version,
        "reference_run_id": reference.run_id,
        "n_classified": len(decided),
        "fallback_rate": float(fallback_turns(turns, reference).mean()),
        "reference_fallback_rate": float(np.mean(np.asarray(reference.confidences) < threshold)),
        "handoff_rate": float((turns["route"] == "handoff").mean()),
        "reference_mean_confidence": float(reference_confidences.mean()),
    }
    if len(decided):
        ks = ks_2samp(window_confidences, reference_confidences)
        figures |= {
            "mean_confidence": float(window_confidences.mean()),
            "confidence_psi": psi(reference_confidences, window_confidences, thresholds.confidence_bins),
            "confidence_ks": float(ks.statistic),
            "confidence_ks_pvalue": float(ks.pvalue),
        }
    window_intents = acted_on(decided["intent"].tolist(), decided["confidence"].tolist(), threshold, reference.labels)
    reference_intents = acted_on(reference.predicted_intents, reference.confidences, threshold, reference.labels)
    if window_intents and reference_intents:
        distance, excess, pvalue = intent_mix_shift(window_intents, reference_intents, reference.labels)
        window_mix, reference_mix = intent_mix(window_intents, reference.labels), intent_mix(reference_intents, reference.labels)
        shares = zip(reference.labels, window_mix, reference_mix, strict=True)
        changes = sorted((IntentShare(intent=i, window=float(w), reference=float(r)) for i, w, r in shares), key=lambda s: -abs(s.change))
        figures |= {"intent_mix_js": distance, "intent_mix_js_excess": excess, "intent_mix_pvalue": pvalue}
        figures["intent_changes"] = changes[:top_changes]
    rate, n_words = oov(turns["text"].dropna(), set(reference.vocabulary))
    figures |= {"oov_rate": rate, "reference_oov_rate": reference.oov_rate, "n_words": n_words}
    if ratings is not None and len(ratings):
        figures |= {"n_ratings": len(ratings), "unhelpful_rate": float((~ratings["helpful"].astype(bool)).mean())}

    breaches = _breaches(figures, thresholds, n, reference)
    if n < thresholds.min_turns:
        notes = [f"{n} turns is fewer than the {thresholds.min_turns} needed for an alarm; the figures are for reading only"]
        notes += [f"would breach: {breach}" for breach in breaches]
        return DriftReport(**base, **figures, status="too few turns", drifted=False, breaches=[], notes=notes)
    status: Status = "drift" if breaches else "ok"
    return DriftReport(**base, **figures, status=status, drifted=bool(breaches), breaches=breaches)


def _breaches(figures: dict[str, object], thresholds: DriftThresholds, n: int, reference: DriftReference) -> list[str]:
    def value(name: str) -> float | None:
        return figures.get(name)  # type: ignore[return-value]

    breaches = []
    fallback = value("fallback_rate")
    if fallback is not None and fallback > thresholds.max_fallback_rate:
        breaches.append(f"fallback rate {fallback:.1%} of {n} turns is above {thresholds.max_fallback_rate:.0%}")
    handoff = value("handoff_rate")
    if thresholds.max_handoff_rate is not None and handoff is not None and handoff > thresholds.max_handoff_rate:
        breaches.append(f"handoff rate {handoff:.1%} of {n} turns is above {thresholds.max_handoff_rate:.0%}")
    psi_value, ks_p = value("confidence_psi"), value("confidence_ks_pvalue")
    if psi_value is not None and ks_p is not None and psi_value > thresholds.max_confidence_psi and ks_p < thresholds.significance:
        breaches.append(
            f"confidence distribution shifted: PSI {psi_value:.3f} > {thresholds.max_confidence_psi} and KS p-value {ks_p:.2g}"
            f" < {thresholds.significance} (mean {value('mean_confidence'):.3f} against {value('reference_mean_confidence'):.3f})"
        )
    js, excess, js_p = value("intent_mix_js"), value("intent_mix_js_excess"), value("intent_mix_pvalue")
    if (
        js is not None
        and excess is not None
        and js_p is not None
        and excess > thresholds.max_intent_mix_js_excess
        and js_p < thresholds.significance
    ):
        moved = ", ".join(f"{s.intent} {s.reference:.0%}->{s.window:.0%}" for s in figures["intent_changes"][:3])  # type: ignore[index]
        breaches.append(
            f"intent mix changed: Jensen-Shannon distance {js:.3f}, {excess:.3f} beyond sampling noise"
            f" > {thresholds.max_intent_mix_js_excess} (p {js_p:.2g}; {moved})"
        )
    rate = value("oov_rate")
    if rate is not None and rate > reference.oov_rate + thresholds.max_oov_increase:
        breaches.append(
            f"out-of-vocabulary words {rate:.1%} against {reference.oov_rate:.1%} at training (more than"
            f" {thresholds.max_oov_increase:.0%} above)"
        )
    unhelpful, rated, ceiling = value("unhelpful_rate"), int(value("n_ratings") or 0), thresholds.max_unhelpful_rate
    if unhelpful is not None and ceiling is not None and rated >= thresholds.min_ratings and unhelpful > ceiling:
        breaches.append(f"customers rated {unhelpful:.1%} of {rated} rated answers unhelpful, above {ceiling:.0%}")
    return breaches


def window_model_version(turns: pd.DataFrame) -> str | None:
    """The model version that served most of the window's turns (None when the turns do not say)."""
    versions = turns["model_version"].dropna()
    return None if versions.empty else str(versions.value_counts().index[0])
