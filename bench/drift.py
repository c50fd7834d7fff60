"""How often the drift monitor's alarm is right: false alarms on familiar traffic, detection of each kind of drift.

Simulated windows over BANKING77 (77 intents), judged by `supportflow.drift.figures.compute_drift` with the default
thresholds. The texts and intents are real: the reference's vocabulary is BANKING77's training text, familiar
windows draw unseen phrasings from its test split, and the new-vocabulary windows are StackFAQ questions
(web-application help, read in place from ../shared/data/stackfaq). The confidences are simulated (a
calibrated model on familiar text: Beta(6, 1.2), threshold 0.5), since no classifier runs here. Writes
bench/results/drift.json.

    .venv/bin/python bench/drift.py [--trials 100]
"""

import argparse
import json
import platform
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from supportflow.drift.figures import DriftReference, build_reference, compute_drift
from supportflow.settings import DriftThresholds

ROOT = Path(__file__).resolve().parent.parent
STACKFAQ = ROOT.parent / "shared" / "data" / "stackfaq" / "queries.csv"
THRESHOLD = 0.5
START = datetime(2026, 11, 20, 9, tzinfo=UTC)


def confident(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.beta(6, 1.2, size=n)


def make_reference(rng: np.random.Generator, train: pd.DataFrame) -> DriftReference:
    labels = sorted(train["category"].unique())
    validation = train.sample(frac=0.1, random_state=0)
    rest = train.drop(validation.index)
    index = {label: i for i, label in enumerate(labels)}
    top = confident(rng, len(validation))
    probabilities = np.tile(((1 - top) / (len(labels) - 1))[:, None], (1, len(labels)))
    probabilities[np.arange(len(validation)), [index[c] for c in validation["category"]]] = top
    return build_reference(probabilities, labels, THRESHOLD, rest["text"], validation["text"], "bench")


def turns(texts: list[str], intents: list[str], confidences: np.ndarray) -> pd.DataFrame:
    fallback = confidences < THRESHOLD
    n = len(texts)
    return pd.DataFrame(
        {
            "received_at": [START + timedelta(seconds=i) for i in range(n)],
            "text": texts,
            "intent": np.where(fallback, "nlu_fallback", intents),
            "confidence": np.where(fallback, THRESHOLD, confidences),
            "route": np.where(fallback, "handoff", "kb"),
            "model_version": "1",
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "drift.json")
    args = parser.parse_args()
    rng = np.random.default_rng(13)
    train = pd.read_csv(ROOT / "examples" / "banking77" / "data" / "train.csv")
    test = pd.read_csv(ROOT / "examples" / "banking77" / "data" / "test.csv")
    foreign = pd.read_csv(STACKFAQ)["query"].dropna().tolist()
    reference = make_reference(rng, train)
    held_in = sorted(test["category"].unique())[:10]
    half = sorted(test["category"].unique())[::2][:40]
    thresholds = DriftThresholds()

    def familiar(n: int) -> pd.DataFrame:
        rows = test.sample(n, replace=True, random_state=int(rng.integers(1 << 31)))
        return turns(rows["text"].tolist(), rows["category"].tolist(), confident(rng, n))

    def fallback_spike(n: int) -> pd.DataFrame:
        window = familiar(n)
        return turns(window["text"].tolist(), window["intent"].tolist(), np.where(rng.random(n) < 0.4, 0.2, confident(rng, n)))

    def confidence_shift(n: int) -> pd.DataFrame:
        rows = test.sample(n, replace=True, random_state=int(rng.integers(1 << 31)))
        return turns(rows["text"].tolist(), rows["category"].tolist(), rng.uniform(0.52, 0.75, n))

    def intent_mix(n: int) -> pd.DataFrame:
        rows = test[test["category"].isin(held_in)].sample(n, replace=True, random_state=int(rng.integers(1 << 31)))
        return turns(rows["text"].tolist(), rows["category"].tolist(), confident(rng, n))

    def new_vocabulary(n: int) -> pd.DataFrame:
        rows = test.sample(n, replace=True, random_state=int(rng.integers(1 << 31)))
        return turns([str(t) for t in rng.choice(foreign, n)], rows["category"].tolist(), confident(rng, n))

    def mild_confidence_shift(n: int) -> pd.DataFrame:
        rows = test.sample(n, replace=True, random_state=int(rng.integers(1 << 31)))
        return turns(rows["text"].tolist(), rows["category"].tolist(), rng.beta(4, 1.2, n))

    def mild_intent_mix(n: int) -> pd.DataFrame:
        rows = test[test["category"].isin(half)].sample(n, replace=True, random_state=int(rng.integers(1 << 31)))
        return turns(rows["text"].tolist(), rows["category"].tolist(), confident(rng, n))

    def some_new_vocabulary(n: int) -> pd.DataFrame:
        window = familiar(n)
        texts = [str(rng.choice(foreign)) if rng.random() < 0.25 else text for text in window["text"]]
        return turns(texts, window["intent"].tolist(), confident(rng, n))

    kinds: dict[str, Callable[[int], pd.DataFrame]] = {
        "familiar": familiar,
        "fallback_spike_40pct": fallback_spike,
        "confidence_shift_0.52_0.75": confidence_shift,
        "intent_mix_10_of_77": intent_mix,
        "new_vocabulary_stackfaq": new_vocabulary,
        "mild_confidence_shift_beta_4_1.2": mild_confidence_shift,
        "mild_intent_mix_40_of_77": mild_intent_mix,
        "new_vocabulary_25pct_of_turns": some_new_vocabulary,
    }
    results: dict[str, dict] = {}
    for kind, make in kinds.items():
        results[kind] = {}
        for n in (60, 200, 1000):
            alarms, reasons, seconds = 0, Counter(), []
            for _ in range(args.trials):
                window = make(n)
                started = time.perf_counter()
                report = compute_drift(window, reference, thresholds, START, START + timedelta(hours=1))
                seconds.append(time.perf_counter() - started)
                alarms += report.drifted
                reasons.update(breach.split(" ")[0] for breach in report.breaches)
            results[kind][str(n)] = {
                "alarm_rate": alarms / args.trials,
                "breaches": dict(reasons),
                "median_seconds": round(float(np.median(seconds)), 4),
            }
            print(kind, n, results[kind][str(n)], flush=True)
    started = time.perf_counter()
    compute_drift(familiar(20_000), reference, thresholds, START, START + timedelta(hours=1))
    payload = {
        "what": "alarm rate of compute_drift with default thresholds on simulated windows (familiar: false alarms; others: detection)",
        "data": "BANKING77 texts and intents (77); StackFAQ questions as new vocabulary; confidences Beta(6, 1.2), threshold 0.5",
        "trials_per_cell": args.trials,
        "thresholds": thresholds.model_dump(),
        "reference": {
            "validation_rows": len(reference.confidences),
            "vocabulary": len(reference.vocabulary),
            "oov_rate": round(reference.oov_rate, 4),
        },
        "results": results,
        "seconds_for_20000_turns": round(time.perf_counter() - started, 3),
        "machine": f"{platform.processor() or platform.machine()}, measured on 2 shared CPU cores",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
