"""Open-intent benchmark: the unknown-intent detector under the standard protocol, on BANKING77 or any labelled data.

The protocol of Zhang, Xu and Lin, "Deep Open Intent Classification with Adaptive Decision Boundary" (ADB, AAAI 2021,
arXiv:2012.10209): for each known-intent ratio (25%, 50%, 75%) and seed, that share of the intents is drawn at
random (`round(n * ratio)`: 19, 38, 58 of BANKING77's 77) and is all the model ever sees; 10% of their training
messages (stratified, seeded) are the validation split that calibrates the model and sets both thresholds; it is
tested on the whole test file, every message of an unseen intent labelled "unknown". A message is predicted "unknown" when
the served detector says `out_of_scope`, else its top intent. Figures: accuracy and macro-F1 over the known intents
plus "unknown" (as ADB reports them), known_accuracy (known-intent messages given their intent), unknown_recall
(unseen-intent messages called unknown), F1 on "unknown" and macro-F1 over the known intents; the mean over seeds,
with each seed's figures. ADB's repository trains on all known-intent training data by default
(`labeled_ratio` 1.0), as this benchmark does; BANKING77 here has no separate development set, hence the 10%. The
published figures beside ours are BANKING77's; on other data (`--data DIR` or `--train FILE --test FILE`) the run
has none, and MSP on the same models is the comparison.

Each model is the project's own: `build_as_configured` (the pipeline's fine-tuning, calibration and detector, with
the settings the pipeline would use and `--quantile` for the detector), exported to ONNX and classified by
`OnnxClassifier` in the variant training would serve (`--variant auto`, the default: the parity check on the known
intents' test messages, as `supportflow.classifier.training` runs it), or the one named. Beside it, in the same run,
the maximum-softmax-probability baseline (MSP, Hendrycks and Gimpel 2017) on the same model, its threshold the same
validation quantile of the top confidence.

One training per ratio and seed, on that share of BANKING77's 9,003 messages, an ONNX export and 3,080 test messages: what that
costs is in docs/classifier.md. `--limit N` keeps N training messages and N test messages per intent, to check the
whole path end to end.

    .venv/bin/python bench/open_intent.py [--profile quick|full] [--seeds 0 1 2] [--ratios 0.25 0.5 0.75]
        [--variant auto|int8|fp32] [--quantile Q] [--limit N] [--runs-dir DIR] [--fine-tuned DIR] [--out PATH]
        [--data DIR | --train FILE --test FILE]

`--fine-tuned DIR` keeps each encoder this run fine-tunes in `DIR/known-<ratio>-seed-<seed>/model` (a meta.json with
its `train_seconds` beside it) and completes those already there instead of fine-tuning again: a change after
fine-tuning (the detector, the readers) is then measured on the same encoders, without their cost.

Writes bench/results/open_intent_<data>.json, `open_intent_banking77.json` by default (a `--limit` run writes only
where `--out` says).
"""

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from supportflow.classifier.artifacts import CLASSIFIER_CARD, EMBEDDING_POOLING, ONNX_DIR, SENTENCE_ENCODER_DIR
from supportflow.classifier.base_weights import resolve_base_model
from supportflow.classifier.inference import OnnxClassifier, classify_outputs, onnx_outputs
from supportflow.classifier.onnx_export import export_and_check, export_onnx, fastest_within, onnx_stand_in
from supportflow.classifier.ood import VERSION as DETECTOR_VERSION
from supportflow.classifier.ood import vocabulary_quantile
from supportflow.classifier.splits import check_training_data
from supportflow.classifier.training import build_as_configured, reuse_fine_tuned
from supportflow.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the repository's `bench` package importable
from bench.labelled_data import DEFAULT_NAME, LabelledData, add_data_arguments, load_data  # noqa: E402

UNKNOWN = "unknown"
VALIDATION_FRACTION = 0.1
RATIOS = (0.25, 0.5, 0.75)
FIGURES = ("accuracy", "macro_f1", "known_accuracy", "unknown_recall", "f1_unknown", "f1_known")
# Published figures on BANKING77, as fractions (the papers print percentages). ADB: its paper's Table 2, as its
# repository's README reproduces it (github.com/thuiar/Adaptive-Decision-Boundary). DA-ADB (Zhang, Xu, Zhao and Zhou,
# "Learning Discriminative Representations and Decision Boundaries for Open Intent Detection", IEEE/ACM TASLP 31,
# 2023) and the TEXTOIR re-run of ADB and MSP: github.com/thuiar/TEXTOIR, open_intent_detection/README.md. F1 there is
# the macro-F1 over the known intents plus the open class, as ours.
BANKING77_ANCHORS = {
    0.25: {
        "ADB (AAAI 2021)": {"accuracy": 0.7885, "macro_f1": 0.7162, "f1_unknown": 0.8456, "f1_known": 0.7094},
        "DA-ADB (TASLP 2023, TEXTOIR)": {"accuracy": 0.8119, "macro_f1": 0.7373, "f1_unknown": 0.8657, "f1_known": 0.7305},
        "ADB (TEXTOIR re-run)": {"accuracy": 0.7933, "macro_f1": 0.7163, "f1_unknown": 0.8505, "f1_known": 0.7092},
        "MSP (TEXTOIR re-run)": {"accuracy": 0.4219, "macro_f1": 0.4992, "f1_unknown": 0.3942, "f1_known": 0.5047},
    },
    0.5: {
        "ADB (AAAI 2021)": {"accuracy": 0.7886, "macro_f1": 0.8090, "f1_unknown": 0.7844, "f1_known": 0.8096},
        "DA-ADB (TASLP 2023, TEXTOIR)": {"accuracy": 0.8151, "macro_f1": 0.8253, "f1_unknown": 0.8193, "f1_known": 0.8254},
        "ADB (TEXTOIR re-run)": {"accuracy": 0.7961, "macro_f1": 0.8134, "f1_unknown": 0.7943, "f1_known": 0.8139},
        "MSP (TEXTOIR re-run)": {"accuracy": 0.6167, "macro_f1": 0.7251, "f1_unknown": 0.4629, "f1_known": 0.7320},
    },
    0.75: {
        "ADB (AAAI 2021)": {"accuracy": 0.8108, "macro_f1": 0.8596, "f1_unknown": 0.6647, "f1_known": 0.8629},
        "DA-ADB (TASLP 2023, TEXTOIR)": {"accuracy": 0.8112, "macro_f1": 0.8565, "f1_unknown": 0.6937, "f1_known": 0.8593},
        "ADB (TEXTOIR re-run)": {"accuracy": 0.8139, "macro_f1": 0.8611, "f1_unknown": 0.6734, "f1_known": 0.8644},
        "MSP (TEXTOIR re-run)": {"accuracy": 0.7708, "macro_f1": 0.8433, "f1_unknown": 0.4605, "f1_known": 0.8499},
    },
}
# Candidate scores measured beside the served detector on the same model, each at these validation quantiles.
SWEEP = (0.9, 0.95, 0.975, 0.99)
KNN = (1, 10)
ANCHORS = {DEFAULT_NAME: BANKING77_ANCHORS}  # data name -> ratio -> published figures
BAR = "ADB (AAAI 2021)"  # the target: above it at every ratio


def known_intents(intents: list[str], ratio: float, seed: int) -> list[str]:
    """ADB's draw: `round(len(intents) * ratio)` intents, uniformly at random for the seed."""
    count = round(len(intents) * ratio)
    return sorted(np.random.default_rng(seed).choice(sorted(intents), size=count, replace=False).tolist())


def open_figures(predicted: list[str], gold: list[str], known: list[str]) -> dict[str, float]:
    predicted_array, gold_array = np.array(predicted), np.array(gold)
    is_unknown = gold_array == UNKNOWN
    f1 = f1_score(gold_array, predicted_array, labels=[*known, UNKNOWN], average=None, zero_division=0)
    return {
        "accuracy": float((predicted_array == gold_array).mean()),
        "macro_f1": float(f1.mean()),
        "known_accuracy": float((predicted_array[~is_unknown] == gold_array[~is_unknown]).mean()),
        "unknown_recall": float((predicted_array[is_unknown] == UNKNOWN).mean()) if is_unknown.any() else float("nan"),
        "f1_unknown": float(f1[-1]),
        "f1_known": float(f1[:-1].mean()),
    }


def nearest_neighbour_distance(train: np.ndarray, texts: np.ndarray, k: int) -> np.ndarray:
    """Per text, the cosine distance to its k-th nearest training message (Sun et al., "Out-of-Distribution Detection
    with Deep Nearest Neighbors", ICML 2022): a candidate score beside the served score, not served."""
    train_unit = train / np.linalg.norm(train, axis=1, keepdims=True)
    text_unit = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    similarities = text_unit @ train_unit.T
    return 1.0 - np.sort(similarities, axis=1)[:, -k]


def flagged_at(validation: dict[str, np.ndarray], test: dict[str, np.ndarray], score: str, quantile: float) -> np.ndarray:
    """The test messages a score flags with its threshold at the in-scope validation messages' `quantile`, beside the
    vocabulary check at its own quantile, as the served detector pairs them; a larger confidence is more in scope, so
    its threshold is the lower quantile."""
    if score == "confidence":
        flagged = test[score] < np.quantile(validation[score], 1 - quantile)
    else:
        flagged = test[score] > np.quantile(validation[score], quantile)
    return flagged | (test["unfamiliar"] > np.quantile(validation["unfamiliar"], vocabulary_quantile(quantile)))


def scored(classifier: OnnxClassifier, texts: list[str], train_embeddings: np.ndarray) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The classify contract on `texts` (what `OnnxClassifier.classify` answers), and per text each score the
    benchmark compares: the served score (`ood_score`, under the key "distance"), the top fused confidence, the share
    of unfamiliar words, the fine-tuned encoder's nearest-neighbour distances."""
    outputs = onnx_outputs(classifier.session, classifier.tokenizer, texts)
    results = classify_outputs(texts, outputs, classifier.parts, top_k=1)
    detector = classifier.parts.detector
    assert detector is not None and detector.vocabulary is not None and outputs.embeddings is not None
    scores = {
        "distance": np.array([r["ood_score"] for r in results]),
        "confidence": np.array([r["confidence"] for r in results]),
        "unfamiliar": detector.vocabulary.unfamiliar(texts),
        **{f"knn{k}": nearest_neighbour_distance(train_embeddings, outputs.embeddings, k) for k in KNN},
    }
    return results, scores


def profile_settings(args: argparse.Namespace) -> Settings:
    """The settings with the benchmark's `--profile` and `--quantile` chosen: what trains and completes each model as
    the pipeline would, and what a kept run is keyed on."""
    return get_settings().model_copy(update={"train_profile": args.profile, "ood_quantile": args.quantile})


def encoder_home(args: argparse.Namespace, ratio: float, seed: int) -> Path | None:
    """With `--fine-tuned DIR`, where this ratio and seed's encoder is kept (`DIR/known-<ratio>-seed-<seed>/model`, a
    meta.json with its `train_seconds` beside it): reused when it is there, written there when this run fine-tunes it."""
    return None if args.fine_tuned is None else args.fine_tuned / f"known-{ratio}-seed-{seed}" / "model"


def keep_encoder(folder: Path, home: Path, train_seconds: float) -> None:
    """Copy the fine-tuned encoder out of a classifier folder (its weights, configuration and tokenizer, not what the
    rest of the build wrote beside them), for a later `--fine-tuned` run to complete again."""
    derived = {CLASSIFIER_CARD, ONNX_DIR, SENTENCE_ENCODER_DIR, *(path.name for path in folder.glob("*.npz"))}
    shutil.copytree(folder, home, ignore=lambda _, names: [name for name in names if name in derived])
    (home.parent / "meta.json").write_text(json.dumps({"train_seconds": train_seconds}) + "\n")


def one_model(
    data: LabelledData, known: list[str], seed: int, args: argparse.Namespace, folder: Path, encoder: Path | None
) -> tuple[dict, dict[str, np.ndarray]]:
    """Train on the known intents only (or complete the encoder kept at `encoder`, fine-tuned on them earlier, and
    keep it there when there is none yet); score the served detector, the MSP baseline and the candidate scores on
    the whole test set. Returns the run's figures and, per validation and test message, its scores (for
    `--runs-dir`)."""
    settings = profile_settings(args)
    train, test = data.train, data.test
    seen = train[train["intent"].isin(known)]
    validation = seen.groupby("intent", group_keys=False).sample(frac=VALIDATION_FRACTION, random_state=seed)
    where = f"{data.title}, {len(known)} known intents, seed {seed}"
    splits = check_training_data(seen.drop(index=validation.index), validation, test[test["intent"].isin(known)], tuple(known), 2, where)
    base, snapshot = resolve_base_model(settings), f"open-intent-{len(known)}-{seed}"
    reused = encoder is not None and encoder.is_dir()
    if reused:
        built = reuse_fine_tuned(encoder, folder, splits, base, settings, snapshot)
    else:
        built = build_as_configured(splits, base, settings, folder, snapshot)
        if encoder is not None:
            keep_encoder(folder, encoder, built.train_seconds)
    variant = args.variant
    if variant == "auto":
        parities = export_and_check(built, splits.test["text"].tolist(), settings.train_threads)
        variant = onnx_stand_in(fastest_within(parities, settings.onnx_parity_tolerance, settings.onnx_alarm_tolerance))
    else:
        export_onnx(folder)
    classifier = OnnxClassifier(folder, variant, settings.train_threads)
    train_embeddings = onnx_outputs(classifier.session, classifier.tokenizer, splits.train["text"].tolist()).embeddings
    assert train_embeddings is not None
    _, validation_scores = scored(classifier, splits.validation["text"].tolist(), train_embeddings)
    results, test_scores = scored(classifier, test["text"].tolist(), train_embeddings)
    gold = [intent if intent in known else UNKNOWN for intent in test["intent"]]
    detector = [UNKNOWN if r["out_of_scope"] else r["intent"] for r in results]

    def figures_when(flagged: np.ndarray) -> dict[str, float]:
        predicted = [UNKNOWN if flag else r["intent"] for r, flag in zip(results, flagged, strict=True)]
        return {name: round(value, 4) for name, value in open_figures(predicted, gold, known).items()}

    candidates = {
        f"{score}@{quantile}": figures_when(flagged_at(validation_scores, test_scores, score, quantile))
        for score in ("distance", "confidence", *(f"knn{k}" for k in KNN))
        for quantile in SWEEP
    }
    msp_threshold = float(np.quantile(built.validation_probabilities.max(axis=1), 1 - args.quantile))
    run = {
        "seed": seed,
        "variant": variant,
        **{name: round(value, 4) for name, value in open_figures(detector, gold, known).items()},
        "msp": figures_when(test_scores["confidence"] < msp_threshold),
        "candidates": candidates,
        "ood_threshold": round(built.detector.threshold, 3),
        "closed_test_accuracy": round(built.test.accuracy, 4),  # the known intents' messages, without the detector
        "train_seconds": round(built.train_seconds, 1),
        "fine_tuning": f"earlier, kept in {encoder}" if reused else "in this run",
        "known_intents": known,
    }
    scores = {f"validation_{name}": values for name, values in validation_scores.items()}
    scores |= {f"test_{name}": values for name, values in test_scores.items()}
    scores |= {"test_gold": np.array(gold), "test_predicted": np.array([r["intent"] for r in results])}
    return run, scores


def run_once(data: LabelledData, known: list[str], seed: int, ratio: float, args: argparse.Namespace) -> dict:
    """One model's figures; with `--runs-dir`, kept there (figures as JSON, per-message scores as .npz) and reused by
    a later call with the same protocol, so seeds can run as separate processes and an interrupted run resumes."""
    protocol = {
        "data": data.name,
        "profile": args.profile,
        "training": profile_settings(args).training_profile().model_dump(),  # the profile as the environment set it
        "quantile": args.quantile,
        "variant": args.variant,
        "limit": args.limit,
        "embedding_pooling": EMBEDDING_POOLING,
        "detector_version": DETECTOR_VERSION,
    }
    stored = None if args.runs_dir is None else args.runs_dir / f"known-{ratio}-seed-{seed}.json"
    if stored is not None and stored.exists():
        kept = json.loads(stored.read_text())
        if kept.get("protocol") == protocol:
            return kept
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="open-intent-") as scratch:
        run, scores = one_model(data, known, seed, args, Path(scratch) / "classifier", encoder_home(args, ratio, seed))
    run |= {"seconds": round(time.perf_counter() - started, 1), "protocol": protocol}
    if stored is not None:
        stored.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(stored.with_suffix(".npz"), **scores)
        stored.write_text(json.dumps(run, indent=2) + "\n")
    return run


def mean_of(runs: list[dict]) -> dict[str, float]:
    return {name: round(float(np.mean([run[name] for run in runs])), 4) for name in FIGURES}


def candidates_mean(runs: list[dict]) -> dict[str, dict[str, float]]:
    return {name: mean_of([run["candidates"][name] for run in runs]) for name in runs[0]["candidates"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=["quick", "full"], default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    parser.add_argument("--variant", choices=["auto", "int8", "fp32"], default="auto")
    parser.add_argument("--quantile", type=float, default=get_settings().ood_quantile, help="the detector's validation quantile")
    parser.add_argument("--limit", type=int, default=None, help="at most N training and N test messages per intent")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep each model's figures and scores here, and reuse them")
    parser.add_argument(
        "--fine-tuned",
        type=Path,
        default=None,
        help="keep the encoders here (DIR/known-<ratio>-seed-<seed>/model), and reuse those already kept",
    )
    parser.add_argument("--conditions", default="2 cores shared with other jobs", help="what else ran on the machine")
    add_data_arguments(parser)
    args = parser.parse_args()
    unknown_ratios = sorted(set(args.ratios) - set(RATIOS))
    if unknown_ratios:
        parser.error(f"ratios {unknown_ratios} are not the protocol's; choose among {list(RATIOS)}")
    if args.limit is not None and args.limit < 10:
        parser.error("--limit must keep at least 10 messages per intent (one for validation, the rest to train on)")
    data = load_data(args)
    out = args.out or (None if args.limit else data.result_file("open_intent"))
    settings = profile_settings(args)
    profile = settings.training_profile()

    if args.limit:
        first = {name: getattr(data, name).groupby("intent", group_keys=False).head(args.limit) for name in ("train", "test")}
        data = replace(data, **first)
    intents = data.intents
    anchors = ANCHORS.get(data.name, {})
    started = time.perf_counter()
    ratios = []
    for ratio in args.ratios:
        runs = []
        for seed in args.seeds:
            known = known_intents(intents, ratio, seed)
            runs.append(run_once(data, known, seed, ratio, args))
            print(f"ratio {ratio} seed {seed}", {name: runs[-1][name] for name in FIGURES}, flush=True)
        ours = mean_of(runs)
        bar = anchors.get(ratio, {}).get(BAR)
        ratios.append(
            {
                "known_ratio": ratio,
                "known_intents": len(runs[0]["known_intents"]),
                **ours,
                "seeds": args.seeds,
                "beats_adb": None if bar is None else ours["accuracy"] > bar["accuracy"] and ours["macro_f1"] > bar["macro_f1"],
                "msp_same_model": mean_of([run["msp"] for run in runs]),
                "candidates_same_model": candidates_mean(runs),
                "anchors": anchors.get(ratio, {}),  # published figures on this data, where there are any
                "runs": runs,
            }
        )
    result = {
        "protocol": "Zhang, Xu and Lin, Deep Open Intent Classification with Adaptive Decision Boundary, AAAI 2021 (arXiv:2012.10209)",
        "method": f"the average of two distances, each standardised over the in-scope validation messages: the Mahalanobis "
        f"distance of the fine-tuned encoder's pooled embedding ({EMBEDDING_POOLING} of the last layer's tokens) to the nearest "
        "known intent (shared covariance), and the cosine distance of the pretrained encoder's sentence embedding (frozen, "
        "the weights fine-tuning started from) to the nearest training message (detector version "
        f"{DETECTOR_VERSION}); or the share of words the known intents' training messages never use",
        "ratios": ratios,
        "threshold": f"the in-scope validation scores' {args.quantile} quantile; no unknown message is seen before testing",
        "candidates": "per run and as the mean over seeds, on the same model: each score (the served score, the top fused "
        "confidence, the cosine distance to the k-th nearest training message) thresholded at the in-scope validation "
        f"messages' quantiles {list(SWEEP)}, beside the vocabulary check, as the served detector pairs them",
        "training_data": "all training messages of the known intents (ADB's default labeled_ratio 1.0), 10% held out for validation",
        "variant": args.variant,
        "profile": {"name": args.profile, **profile.model_dump()},
        "limit_per_intent": args.limit,
        "data": {"train": len(data.train), "test": len(data.test), "intents": len(intents)},
        "dataset": data.describe(),
        "seconds": round(time.perf_counter() - started, 1),  # this call's; a reused run keeps its own `seconds`
        "anchors_in": "fractions (published as percentages)",
        "measured_on": f"{settings.train_threads} CPU threads, {platform.machine()}, {args.conditions}",
        "fine_tuned_on": settings.train_device,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
    }
    text = json.dumps(result, indent=2) + "\n"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(json.dumps([{k: v for k, v in r.items() if k not in ("runs", "anchors")} for r in ratios], indent=2))


if __name__ == "__main__":
    main()
