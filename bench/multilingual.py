"""Non-English messages to an English desk: does the classifier flag them as unknown, or route them confidently?

The set, `bench/data/multilingual.csv` (`text,language,meaning`), was written for this project (no third-party text,
no licence to follow): 205 customer-support messages in 16 languages, Latin-script (French, German, Spanish, Italian,
Portuguese, Dutch, Polish, Turkish, Indonesian, Vietnamese) and others (Russian, Arabic, Chinese, Japanese, Hindi,
Greek), each with its English gist in `meaning`. Most ask about BANKING77's own topics (a card that has not arrived, a
lost card, a pending transfer, the exchange rate, a failed top-up, a refund, the PIN, a declined payment, the ATM, fees),
because a foreign message about a topic the desk knows is the hard case: its loanwords ("PIN", "ATM", "Apple Pay")
and shared stems pull it towards an intent. The rest are generic support requests (a password, a person, opening hours).
An English desk has no answer to any of them that the customer could read, so the right outcome is the unknown flag
(the bot hands the message to a person); an answer at or above the card's threshold is a confident misroute.

Each message goes through `OnnxClassifier`, the class `/classify` serves. Reported per language and overall, for three
rules: `served` (the classify contract's `out_of_scope`, whatever the model's detector holds), `distance` (the
detector's score alone, without the vocabulary check, as models before it flag: the Mahalanobis distance, averaged
with the pretrained encoder's neighbour distance in a model trained with it), `vocabulary` (the share of words the
desk's training messages never use, alone; null for a model without it):

- `flagged`: the share called out of scope;
- `misrouted`: the share answered confidently (confidence at or above the card's threshold and not flagged);
- the rest (neither) are offered choices or handed off for low confidence.

Beside it, on BANKING77's `test.csv` (3,080 English messages, every one in scope) or the files `--in-scope` names, the
share each rule flags: the false alarms a fix must not raise. The demo's model was trained on a snapshot of `train.csv`
and `test.csv` together, so it has seen part of `test.csv` (and its words); its snapshot's own test split
(`.lake/snapshots/<id>/test.parquet`) is the held-out check for it. A model on bench/intent.py's splits has not:
`vocabulary_on_benchmark_splits` is the vocabulary check such a model holds (it needs no model), on `test.csv` and on
the set.

    .venv/bin/python bench/multilingual.py FOLDER | --model-uri models:/intent-classifier@production
        [--variant fp32|int8] [--in-scope CSV_OR_PARQUET ...] [--note TEXT] [--out PATH]

FOLDER is a classifier folder (card, ONNX exports, detector). Writes bench/results/multilingual_banking77.json.
"""

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from supportflow.classifier.artifacts import MODEL_ARTIFACT
from supportflow.classifier.inference import OnnxClassifier
from supportflow.classifier.ood import fit_vocabulary, vocabulary_quantile
from supportflow.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
SET = ROOT / "bench" / "data" / "multilingual.csv"
BANKING77_TEST = ROOT / "examples" / "banking77" / "data" / "test.csv"
RESULT = ROOT / "bench" / "results" / "multilingual_banking77.json"
RULES = ("served", "distance", "vocabulary")


def classifier_folder(model_uri: str) -> Path:
    """The classifier folder inside a registered model (`models:/name@alias`, `models:/name/3`), fetched locally."""
    settings = get_settings()
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, tracking_uri=settings.mlflow_tracking_uri))
    return local / "artifacts" / MODEL_ARTIFACT


def flags(classifier: OnnxClassifier, texts: list[str], results: list[dict]) -> dict[str, np.ndarray | None]:
    """Per rule, which texts it calls out of scope."""
    detector = classifier.parts.detector
    served = np.array([r["out_of_scope"] for r in results])
    if detector is None:
        return {"served": served, "distance": None, "vocabulary": None}
    distance = np.array([r["ood_score"] for r in results]) > detector.threshold
    vocabulary = None if detector.vocabulary is None else detector.vocabulary.unfamiliar(texts) > detector.vocabulary.threshold
    return {"served": served, "distance": distance, "vocabulary": vocabulary}


def figures(flagged: np.ndarray | None, confident: np.ndarray) -> dict[str, float] | None:
    if flagged is None:
        return None
    return {"flagged": round(float(flagged.mean()), 4), "misrouted": round(float((confident & ~flagged).mean()), 4)}


def shown(path: Path) -> str:
    """A path as the JSON names it: from the repository's root when it lies inside, so results compare across clones."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def in_scope_figures(classifier: OnnxClassifier, path: Path) -> dict:
    """How many of the desk's own messages each rule flags (false alarms, handed off), and how many are answered."""
    texts = (pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path))["text"].tolist()
    results = classifier.classify(texts, top_k=1)
    flagged = flags(classifier, texts, results)
    answered = np.array([r["confidence"] >= classifier.card.threshold for r in results]) & ~flagged["served"]
    return {
        "messages": len(texts),
        "flagged": {rule: None if rule_flags is None else round(float(rule_flags.mean()), 4) for rule, rule_flags in flagged.items()},
        "answered_confidently": round(float(answered.mean()), 4),
    }


def vocabulary_on_benchmark_splits(messages: pd.DataFrame) -> dict:
    """The vocabulary check alone, as a model trained on bench/intent.py's splits holds it, whatever model is measured:
    BANKING77's test.csv is held out from those splits, so its false alarms here are clean (the demo's snapshot is not)."""
    sys.path.insert(0, str(ROOT))  # run as a script: make the repository's `bench` package importable
    from bench.intent import benchmark_splits
    from bench.labelled_data import banking77

    settings = get_settings()
    splits = benchmark_splits(banking77(), settings.min_train_examples_per_intent)
    quantile = vocabulary_quantile(settings.ood_quantile)
    vocabulary = fit_vocabulary(splits.train["text"].tolist(), splits.validation["text"].tolist(), quantile)
    flagged = vocabulary.unfamiliar(messages["text"].tolist()) > vocabulary.threshold
    english = vocabulary.unfamiliar(pd.read_csv(BANKING77_TEST)["text"].tolist()) > vocabulary.threshold
    return {
        "quantile": quantile,
        "threshold": round(vocabulary.threshold, 4),
        "words": len(vocabulary.vocabulary),
        "banking77_test_flagged": round(float(english.mean()), 4),
        "multilingual_flagged": round(float(flagged.mean()), 4),
        "per_language_flagged": {
            language: round(float(flagged[rows.index.to_numpy()].mean()), 4) for language, rows in messages.groupby("language", sort=False)
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("folder", nargs="?", type=Path, help="a classifier folder: card, ONNX exports, detector")
    source.add_argument("--model-uri", help="a registered model, e.g. models:/intent-classifier@production")
    parser.add_argument("--variant", choices=["fp32", "int8"], default="fp32")
    parser.add_argument("--note", default="", help="where the model comes from, kept in the JSON")
    parser.add_argument(
        "--in-scope",
        type=Path,
        nargs="+",
        default=[BANKING77_TEST],
        help="messages of the desk's own intents (CSV or Parquet with a `text` column) the rules must not flag",
    )
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    folder = args.folder or classifier_folder(args.model_uri)
    classifier = OnnxClassifier(folder, args.variant, threads=1)
    card, detector = classifier.card, classifier.parts.detector

    messages = pd.read_csv(SET)
    texts = messages["text"].tolist()
    started = time.perf_counter()
    results = classifier.classify(texts, top_k=1)
    confident = np.array([r["confidence"] >= card.threshold for r in results])
    flagged = flags(classifier, texts, results)
    per_language = {}
    for language, rows in messages.groupby("language", sort=False):
        chosen = rows.index.to_numpy()
        per_language[language] = {"messages": len(rows)} | {
            rule: figures(None if flagged[rule] is None else flagged[rule][chosen], confident[chosen]) for rule in RULES
        }
    misrouted = {
        rule: [
            {"text": text, "language": language, "meaning": meaning, "intent": r["intent"], "confidence": round(r["confidence"], 3)}
            for text, language, meaning, r, confidently in zip(
                texts, messages["language"], messages["meaning"], results, confident & ~flagged[rule], strict=True
            )
            if confidently
        ]
        for rule in RULES
        if flagged[rule] is not None
    }

    in_scope = {shown(path): in_scope_figures(classifier, path) for path in args.in_scope}
    seconds = time.perf_counter() - started

    result = {
        "question": "are non-English messages flagged as unknown rather than confidently misrouted, without flagging English?",
        "model": {
            "source": args.model_uri or str(folder),
            "note": args.note,
            "variant": args.variant,
            "base_model": card.base_model,
            "snapshot_id": card.snapshot_id,
            "intents": len(card.labels),
            "threshold": round(card.threshold, 4),
            "ood_threshold": None if detector is None else round(detector.threshold, 3),
            "ood_quantile": None if detector is None else detector.quantile,
            "vocabulary_threshold": None if detector is None or detector.vocabulary is None else round(detector.vocabulary.threshold, 4),
            "vocabulary_words": None if detector is None or detector.vocabulary is None else len(detector.vocabulary.vocabulary),
        },
        "rules": {
            "served": "the classify contract's out_of_scope: the model's whole detector",
            "distance": "the detector's score (`ood_score`) above its threshold, without the vocabulary check: the Mahalanobis "
            "distance to the nearest intent, averaged with the pretrained encoder's distance to the nearest training message "
            "in a version 3 detector",
            "vocabulary": "the share of words never seen in the training messages above its threshold (null: the model has none)",
        },
        "set": {"path": str(SET.relative_to(ROOT)), "messages": len(messages), "languages": len(per_language)},
        "multilingual": {rule: figures(flagged[rule], confident) for rule in RULES},
        "per_language": per_language,
        "misrouted_messages": misrouted,
        "in_scope": in_scope,
        "vocabulary_on_benchmark_splits": vocabulary_on_benchmark_splits(messages),
        "seconds": round(seconds, 1),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({key: result[key] for key in ("model", "multilingual", "in_scope", "vocabulary_on_benchmark_splits")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
