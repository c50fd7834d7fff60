"""Long-tail benchmark: what the classifier learns from intents with 10 and with 5 examples, on BANKING77 or any
labelled data.

Real desks have many intents with few examples. This cuts the training file (BANKING77's `train.csv` by default),
with a fixed seed, so that a third of the intents keep 10 examples, another third 5 (an intent with no more keeps
what it has), and the rest all of theirs; then trains on it through the pipeline's own path (ingest into a scratch
lake, validate against the ticket contract and a catalogue of the data's intents, the snapshot's seeded split,
`load_training_splits`, `build_as_configured`), and scores the test file (BANKING77's official `test.csv`) per
bucket: accuracy and macro-F1 over the 5-example, the 10-example and the untouched intents. The same path on the
whole training file gives the full-data model the untouched intents are compared with. Writes
bench/results/long_tail_<data>.json (`long_tail_banking77.json` by default).

Targets (issue 12): macro-F1 >= 0.80 on the 10-example intents, >= 0.70 on the 5-example ones, and the untouched
intents at most half a point (0.005 macro-F1) below the full-data model.

    .venv/bin/python bench/long_tail.py [--profile full|quick] [--max-intents N] [--skip-full-data] [--out FILE]
        [--data DIR | --train FILE --test FILE]

The full profile trains two models (about 20 minutes each on 2 cores); `--profile quick --max-intents 12` checks the
script end to end in a few minutes (its figures mean nothing: do not publish them).
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import accuracy_score, f1_score

from supportflow.classifier.base_weights import BaseModelChoice, resolve_base_model
from supportflow.classifier.splits import LabelledSplits
from supportflow.classifier.training import build_as_configured, load_training_splits, reuse_fine_tuned
from supportflow.ingest.load import ingest_file
from supportflow.lake import open_lake
from supportflow.settings import Settings, get_settings
from supportflow.validate.snapshot import SnapshotManifest, validate_lake

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the repository's `bench` package importable
from bench.intent import benchmark_splits  # noqa: E402
from bench.labelled_data import LabelledData, add_data_arguments, load_data  # noqa: E402

SEED = 13
CUTS = {"10": 10, "5": 5}  # bucket -> examples kept; a third of the intents each, the rest untouched
TARGETS = {"10": 0.80, "5": 0.70, "untouched_max_drop": 0.005}
NOT_LEARNED = "<not learned>"  # the prediction counted for a message whose intent the model has no label for


def long_tail(train: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The cut training set, and which intents are in which bucket. Seeded: the same intents and rows every run."""
    rng = np.random.default_rng(seed)
    intents = sorted(train["intent"].unique())
    order = [intents[i] for i in rng.permutation(len(intents))]
    third = len(intents) // 3
    buckets = {"10": sorted(order[:third]), "5": sorted(order[third : 2 * third]), "untouched": sorted(order[2 * third :])}
    kept = [train[train["intent"].isin(buckets["untouched"])]]
    for bucket, examples in CUTS.items():
        chosen = train[train["intent"].isin(buckets[bucket])]
        larger = chosen.groupby("intent")["intent"].transform("size") > examples
        kept.append(chosen[larger].groupby("intent", group_keys=False).sample(n=examples, random_state=seed))
        kept.append(chosen[~larger])  # an intent with no more examples than the cut keeps them all
    return pd.concat(kept).sort_index(), buckets


def pipeline_splits(export: pd.DataFrame, settings: Settings, folder: Path, source: str) -> tuple[SnapshotManifest, LabelledSplits]:
    """What the train flow would get from this export: ingested, validated against a catalogue of its intents and
    split, in a scratch lake and workspace."""
    path = folder / "tickets.csv"
    export[["text", "intent"]].to_csv(path, index=False)
    workspace = folder / "workspace"
    workspace.mkdir()
    catalogue = {"name": source, "version": "1.0.0", "intents": sorted(export["intent"].unique())}
    (workspace / "intents.yaml").write_text(yaml.safe_dump(catalogue, sort_keys=False, allow_unicode=True))
    settings = settings.model_copy(update={"workspace": workspace})
    lake = open_lake(settings)
    ingest_file(str(path), lake, settings, source=source)
    validate_lake(lake, settings)
    return load_training_splits(settings)


def bucket_scores(gold: np.ndarray, predicted: np.ndarray, intents: list[str]) -> dict[str, float | int]:
    """Accuracy on the bucket's test messages; macro-F1 over the bucket's intents, each intent's F1 counting every
    prediction of it (a message of another bucket predicted as one of these lowers its precision)."""
    mine = np.isin(gold, intents)
    return {
        "intents": len(intents),
        "test_messages": int(mine.sum()),
        "accuracy": round(float(accuracy_score(gold[mine], predicted[mine])), 4),
        "macro_f1": round(float(f1_score(gold, predicted, labels=intents, average="macro", zero_division=0)), 4),
    }


def train_and_score(
    export: pd.DataFrame,
    test: pd.DataFrame,
    buckets: dict[str, list[str]],
    settings: Settings,
    base: BaseModelChoice,
    name: str,
    source: str,
    fine_tuned: Path | None = None,
) -> dict:
    """One model through the pipeline's path, scored on the official test set per bucket. With `fine_tuned`, an
    encoder `fine_tune` wrote earlier on this very path's splits and profile (its run's seconds in meta.json beside
    it) stands in for fine-tuning again; everything after it runs here."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"long-tail-{name}-") as scratch:
        folder = Path(scratch)
        scratch_stores = {"lake_url": str(folder / "lake"), "gx_root": folder / "gx", "models_dir": folder / "models"}
        settings = settings.model_copy(update=scratch_stores)
        manifest, splits = pipeline_splits(export, settings, folder, source)
        # The official test set in place of the snapshot's own test split (which the pipeline holds out too, so it is
        # not trained on). An intent the model did not learn cannot be predicted: its messages count as wrong.
        learned = test["intent"].isin(splits.labels).to_numpy()
        official = LabelledSplits(splits.train, splits.validation, test[learned].reset_index(drop=True), splits.labels, splits.left_out)
        if fine_tuned is None:
            built = build_as_configured(official, base, settings, folder / "model", manifest.snapshot_id)
        else:
            built = reuse_fine_tuned(fine_tuned, folder / "model", official, base, settings, manifest.snapshot_id)
    gold = test["intent"].to_numpy()
    predicted = np.full(len(test), NOT_LEARNED, dtype=object)
    predicted[learned] = np.array(splits.labels, dtype=object)[built.test_probabilities.argmax(axis=1)]
    result = {
        "train_examples": len(splits.train),
        "validation_examples": len(splits.validation),
        "snapshot_rows": manifest.rows,
        "left_out": [entry.model_dump() for entry in manifest.left_out],
        "overall": bucket_scores(gold, predicted, sorted(set(gold))),
        "buckets": {bucket: bucket_scores(gold, predicted, intents) for bucket, intents in buckets.items()},
        "train_seconds": round(built.train_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "threshold": round(built.card.threshold, 4),
        "fusion": {
            "lexical_weight": round(built.card.lexical_weight, 4),
            "prototype_weight": round(built.card.prototype_weight, 4),
            "sentence_prototype_weight": round(built.card.sentence_prototype_weight, 4),
            "sentence_neighbour_weight": round(built.card.sentence_neighbour_weight, 4),
            "class_balance": settings.class_balance,
            "readers": settings.classifier_readers,
        },
        "head_alone": {"accuracy": round(built.encoder_test.accuracy, 4), "macro_f1": round(built.encoder_test.macro_f1, 4)},
        "fine_tuning": "fine-tuned in this run" if fine_tuned is None else f"fine-tuned earlier on this path ({fine_tuned})",
    }
    print(name, json.dumps(result["buckets"]), flush=True)
    return result


def intent_bench_reference(
    fine_tuned: Path, data: LabelledData, test: pd.DataFrame, buckets: dict[str, list[str]], settings: Settings, base: BaseModelChoice
) -> dict:
    """The full-data model when none was fine-tuned on this path: `bench/intent.py`'s encoder (the same profile, on
    90% of the training file rather than the pipeline's 80%: a reference no weaker than this path's), completed on its
    own splits and scored per bucket on the same test set."""
    splits = benchmark_splits(data, settings.min_train_examples_per_intent)
    official = LabelledSplits(splits.train, splits.validation, test.reset_index(drop=True), splits.labels, splits.left_out)
    with tempfile.TemporaryDirectory(prefix="long-tail-reference-") as scratch:
        built = reuse_fine_tuned(fine_tuned, Path(scratch) / "model", official, base, settings, data.name)
    gold = test["intent"].to_numpy()
    predicted = np.array(splits.labels, dtype=object)[built.test_probabilities.argmax(axis=1)]
    return {
        "overall": bucket_scores(gold, predicted, sorted(set(gold))),
        "buckets": {bucket: bucket_scores(gold, predicted, intents) for bucket, intents in buckets.items()},
        "fine_tuning": f"bench/intent.py's encoder ({fine_tuned}), on its 90% of the training file",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=["quick", "full"], default="full")
    parser.add_argument("--max-intents", type=int, default=0, help="only this many intents (seeded), to check the script quickly")
    parser.add_argument("--skip-full-data", action="store_true", help="train only the long-tail model (no comparison)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--fine-tuned", type=Path, help="the long-tail model's encoder, fine-tuned earlier on this path (see train_and_score)"
    )
    parser.add_argument("--full-data-fine-tuned", type=Path, help="the same for the full-data model")
    parser.add_argument(
        "--full-data-from-intent-bench", type=Path, help="instead of a full-data model on this path: bench/intent.py's encoder"
    )
    parser.add_argument("--out", type=Path, help="the result file (default: bench/results/long_tail_<data>.json)")
    add_data_arguments(parser)
    args = parser.parse_args()
    data = load_data(args)
    settings = get_settings().model_copy(update={"train_profile": args.profile, "workers": 1})
    train, test = data.train, data.test
    if args.max_intents:
        chosen = [data.intents[i] for i in np.random.default_rng(args.seed).permutation(len(data.intents))[: args.max_intents]]
        train, test = train[train["intent"].isin(chosen)], test[test["intent"].isin(chosen)]
    test = test.reset_index(drop=True)
    cut, buckets = long_tail(train, args.seed)
    print(f"long tail: {len(cut)} of {len(train)} training rows; " + ", ".join(f"{b}: {len(i)} intents" for b, i in buckets.items()))
    base = resolve_base_model(settings)
    models = {"long_tail": train_and_score(cut, test, buckets, settings, base, "long_tail", data.name, args.fine_tuned)}
    if args.full_data_from_intent_bench:
        models["full_data"] = intent_bench_reference(args.full_data_from_intent_bench, data, test, buckets, settings, base)
    elif not args.skip_full_data:
        models["full_data"] = train_and_score(train, test, buckets, settings, base, "full_data", data.name, args.full_data_fine_tuned)
    long_tail_buckets = models["long_tail"]["buckets"]
    verdict = {
        "10_examples_macro_f1": {"measured": long_tail_buckets["10"]["macro_f1"], "target": TARGETS["10"]},
        "5_examples_macro_f1": {"measured": long_tail_buckets["5"]["macro_f1"], "target": TARGETS["5"]},
    }
    if "full_data" in models:
        drop = models["full_data"]["buckets"]["untouched"]["macro_f1"] - long_tail_buckets["untouched"]["macro_f1"]
        verdict["untouched_macro_f1_drop"] = {"measured": round(drop, 4), "target_at_most": TARGETS["untouched_max_drop"]}
    for figures in verdict.values():
        target = figures.get("target")
        figures["met"] = figures["measured"] >= target if target is not None else figures["measured"] <= figures["target_at_most"]
    result = {
        "data": f"{data.title}'s training file cut to a long tail, scored on its test file",
        "dataset": data.describe(),
        "seed": args.seed,
        "buckets": buckets,
        "targets": verdict,
        "models": models,
        "min_examples_per_intent": settings.min_examples_per_intent,
        "min_train_examples_per_intent": settings.min_train_examples_per_intent,
        "split_fractions": {"validation": settings.validation_fraction, "test": settings.test_fraction},
        "base_model": base.name,
        "profile": {"name": args.profile, **settings.training_profile().model_dump()},
        "max_intents": args.max_intents or None,
        "measured_on": f"{settings.train_threads} CPU threads, {os.cpu_count()} cores (shared), {platform.machine()}",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
    }
    out = args.out or data.result_file("long_tail")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["targets"], indent=2))


if __name__ == "__main__":
    main()
