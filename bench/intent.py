"""Intent benchmark: the project's classifier against two peers, in one run, on BANKING77 or any labelled data.

All three train on the same 90% of the training file (the other 10%, stratified and seeded, is the
validation split that calibrates the classifier and chooses its threshold) and are scored on
the test file. Peers: scikit-learn TF-IDF + logistic regression, and Rasa 3.6's DIETClassifier trained in
Rasa's own Python 3.10 environment (`make rasa-venv`). Writes bench/results/intent_<data>.json
(`intent_banking77.json` by default).

    .venv/bin/python bench/intent.py [--profile full|quick] [--skip-rasa] [--data DIR | --train FILE --test FILE]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, make_pipeline

from supportflow.classifier.base_weights import resolve_base_model
from supportflow.classifier.build import BuiltClassifier
from supportflow.classifier.calibrate import POINT_ESTIMATE, promises
from supportflow.classifier.evaluate_metrics import load_metric
from supportflow.classifier.inference import OnnxClassifier
from supportflow.classifier.onnx_export import export_and_check, fastest_within
from supportflow.classifier.splits import LabelledSplits, check_training_data
from supportflow.classifier.training import build_as_configured, reuse_fine_tuned
from supportflow.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the repository's `bench` package importable
from bench.labelled_data import LabelledData, add_data_arguments, load_data  # noqa: E402

VALIDATION_FRACTION = 0.1
SEED = 13


def benchmark_splits(data: LabelledData, min_examples: int) -> LabelledSplits:
    """The training file less a stratified, seeded 10% for validation; the test file as it is."""
    train = data.train
    validation = train.groupby("intent", group_keys=False).sample(frac=VALIDATION_FRACTION, random_state=SEED)
    return check_training_data(train.drop(index=validation.index), validation, data.test, tuple(data.intents), min_examples, data.source)


def scores(predicted: list[int] | np.ndarray, references: list[int] | np.ndarray) -> dict[str, float]:
    return {
        "accuracy": round(load_metric("accuracy").compute(predictions=predicted, references=references)["accuracy"], 4),
        "macro_f1": round(load_metric("macro_f1").compute(predictions=predicted, references=references)["macro_f1"], 4),
    }


def tfidf_logreg(splits: LabelledSplits) -> dict:
    model = make_pipeline(
        FeatureUnion(
            [
                ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)),
                ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)),
            ]
        ),
        LogisticRegression(C=20.0, max_iter=2000),
    )
    started = time.perf_counter()
    model.fit(splits.train["text"], splits.label_ids("train"))
    seconds = time.perf_counter() - started
    return {**scores(model.predict(splits.test["text"]), splits.label_ids("test")), "train_seconds": round(seconds, 1)}


def served(built: BuiltClassifier, splits: LabelledSplits, threads: int, tolerance: float, alarm_tolerance: float) -> dict:
    """The model as the bot serves it: exported to ONNX, the variant chosen as training chooses it, scored through
    the class `/classify` runs (the lexical reader fused, as in serving)."""
    texts = splits.test["text"].tolist()
    parities = export_and_check(built, texts, threads)
    variant = fastest_within(parities, tolerance, alarm_tolerance)
    if variant == "torch":
        return {"variant": "torch", **scores(built.test_probabilities.argmax(1), built.test_labels)}
    index = {label: i for i, label in enumerate(built.card.labels)}
    predicted = [index[result["intent"]] for result in OnnxClassifier(built.folder, variant, threads).classify(texts, top_k=1)]
    return {
        "variant": variant,
        **scores(predicted, built.test_labels),
        "variants": {
            p.variant: {
                "accuracy": round(p.accuracy, 4),
                "seconds_per_100": round(p.seconds_per_100, 3),
                "out_of_scope_rate": round(p.out_of_scope_rate, 4),
            }
            for p in parities
        },
        "torch_out_of_scope_rate": round(float(built.test_out_of_scope.mean()), 4),
    }


def rasa_diet(splits: LabelledSplits, rasa_python: Path, epochs: int, transformer_layers: int) -> dict:
    if not rasa_python.exists():
        raise SystemExit(f"{rasa_python} is missing: run `make rasa-venv` first (or pass --skip-rasa)")
    with tempfile.TemporaryDirectory(prefix="rasa-bench-") as folder:
        work = Path(folder)
        for name in ("train", "test"):
            rows = getattr(splits, name)[["text", "intent"]].to_dict("records")
            (work / f"{name}.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
        env = {**os.environ, "RASA_TELEMETRY_ENABLED": "false", "TF_CPP_MIN_LOG_LEVEL": "2"}
        command = [str(rasa_python), str(ROOT / "bench" / "rasa_diet.py"), str(work), "--epochs", str(epochs)]
        subprocess.run([*command, "--transformer-layers", str(transformer_layers)], check=True, env=env)
        result = json.loads((work / "predictions.json").read_text())
    index = {label: i for i, label in enumerate(splits.labels)}
    predicted = [index.get(name, -1) for name in result["predicted"]]
    return {
        **scores(predicted, splits.label_ids("test")),
        "train_seconds": round(result["train_seconds"], 1),
        "epochs": epochs,
        "transformer_layers": transformer_layers,
    }


def promise_figures(built: BuiltClassifier, confidence: float) -> dict[str, float]:
    """The thresholds chosen on validation for each promise (90-99% precision), bounded with `confidence`, on test."""
    validation = (built.validation_probabilities, built.validation_labels)
    return {
        name: round(value, 4)
        for name, value in promises(validation, (built.test_probabilities, built.test_labels), confidence=confidence).items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=["quick", "full"], default="full")
    parser.add_argument("--skip-rasa", action="store_true")
    # DIET's default two transformer layers took ~150 s per epoch here; without them an epoch takes ~10 s.
    parser.add_argument("--rasa-epochs", type=int, default=40)
    parser.add_argument("--rasa-transformer-layers", type=int, default=0)
    parser.add_argument(
        "--fine-tuned",
        type=Path,
        help="a folder `fine_tune` wrote with this profile on these splits, with its run's train_seconds in meta.json beside "
        "it: the readers, fusion, calibration and serving are measured on it instead of fine-tuning again",
    )
    parser.add_argument("--out", type=Path, help="the result file (default: bench/results/intent_<data>.json)")
    parser.add_argument(
        "--conditions", default="2 cores shared with other jobs", help="what else ran on the machine, recorded with the figures"
    )
    add_data_arguments(parser)
    args = parser.parse_args()
    data = load_data(args)
    out = args.out or data.result_file("intent")
    settings = get_settings().model_copy(update={"train_profile": args.profile})
    profile = settings.training_profile()
    splits = benchmark_splits(data, settings.min_train_examples_per_intent)
    peers = {"tfidf_logreg": tfidf_logreg(splits)}
    print("tfidf_logreg", peers["tfidf_logreg"], flush=True)

    base = resolve_base_model(settings)
    with tempfile.TemporaryDirectory(prefix="intent-bench-") as folder:
        target, started = Path(folder) / "model", time.perf_counter()
        if args.fine_tuned:
            built = reuse_fine_tuned(args.fine_tuned, target, splits, base, settings, data.name)
            fine_tuning = (
                f"fine-tuned earlier by fine_tune() with this profile and these splits ({args.fine_tuned}), its seconds recorded then"
            )
        else:
            built = build_as_configured(splits, base, settings, target, data.name)
            fine_tuning = "fine-tuned in this run"
        build_seconds = time.perf_counter() - started + (built.train_seconds if args.fine_tuned else 0.0)
        serving = served(built, splits, settings.train_threads, settings.onnx_parity_tolerance, settings.onnx_alarm_tolerance)
    print("classifier", serving, round(built.train_seconds), flush=True)
    peers["rasa_diet"] = (
        None if args.skip_rasa else rasa_diet(splits, settings.rasa_venv / "bin" / "python", args.rasa_epochs, args.rasa_transformer_layers)
    )
    print("rasa_diet", peers["rasa_diet"], flush=True)

    result = {
        # The served model: ONNX, the lexical reader fused, through the class /classify runs.
        "accuracy": serving["accuracy"],
        "macro_f1": serving["macro_f1"],
        "serving_variant": serving["variant"],
        "train_seconds": round(built.train_seconds, 1),
        # Fine-tuning, the lexical reader, fusion, calibration and the detector: all a training run does before export.
        "build_seconds": round(build_seconds, 1),
        "fine_tuning": fine_tuning,
        "base_model": base.name,
        "threshold": round(built.card.threshold, 4),
        "coverage_at_threshold": round(built.test_at_threshold.coverage, 4),
        "precision_at_threshold": round(built.test_at_threshold.precision, 4),
        "wrong_at_threshold": round(built.test_at_threshold.wrong, 4),  # the share of all test messages answered wrongly
        # Thresholds chosen on validation for each promise (90-99% precision), scored on test.
        **promise_figures(built, built.card.precision_confidence),
        "peers": peers,
        # Every reader tried on this run's models, on test; the served figures are the fused ONNX ones above.
        "variants": {
            "encoder_alone_torch": {
                "accuracy": round(built.encoder_test.accuracy, 4),
                "macro_f1": round(built.encoder_test.macro_f1, 4),
            },
            "three_readers_torch": {
                "accuracy": round(built.test.accuracy, 4),
                "macro_f1": round(built.test.macro_f1, 4),
                "lexical_weight": round(built.fusion.lexical_weight, 4),
                "prototype_weight": round(built.fusion.prototype_weight, 4),
                "sentence_prototype_weight": round(built.fusion.sentence_prototype_weight, 4),
                "sentence_neighbour_weight": round(built.fusion.sentence_neighbour_weight, 4),
            },
            **{f"three_readers_onnx_{name}": figures for name, figures in serving.get("variants", {}).items()},
            # The same thresholds chosen where the validation precision itself reaches each promise (no bound).
            "thresholds_at_validation_precision": promise_figures(built, POINT_ESTIMATE),
        },
        "target_precision": settings.target_precision,
        "max_wrong_answers": settings.max_wrong_answers,
        "precision_confidence": built.card.precision_confidence,
        "temperature": round(built.card.temperature, 4),
        "lexical_weight": round(built.card.lexical_weight, 4),
        "prototype_weight": round(built.card.prototype_weight, 4),
        "sentence_prototype_weight": round(built.card.sentence_prototype_weight, 4),
        "sentence_neighbour_weight": round(built.card.sentence_neighbour_weight, 4),
        "class_balance": settings.class_balance,
        "readers": settings.classifier_readers,
        "validation_coverage_at_threshold": round(built.card.coverage_at_threshold, 4),
        "expected_calibration_error": round(built.test.expected_calibration_error, 4),
        "profile": {"name": args.profile, **profile.model_dump()},
        "data": {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)},
        "dataset": data.describe(),
        "measured_on": f"{settings.train_threads} CPU threads, {args.conditions}, {platform.machine()}",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
