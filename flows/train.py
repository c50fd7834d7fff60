"""The `train` flow: snapshot -> train -> evaluate -> register -> promotion gate."""

import shutil
import tempfile
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from supportflow.classifier.base_weights import BaseModelChoice, resolve_base_model
from supportflow.classifier.build import BuiltClassifier, evaluate_classifier
from supportflow.classifier.fine_tune import FineTuned, LabelledSplits, check_training_data, fine_tune
from supportflow.classifier.onnx_export import check_parity, export_onnx
from supportflow.classifier.registry import (
    MODEL_NAME_IN_RUN,
    GateResult,
    connect,
    find_trained,
    log_training_run,
    register_and_gate,
    score_version,
)
from supportflow.digest import text_digest
from supportflow.drift.figures import build_reference
from supportflow.lake import open_lake
from supportflow.settings import Settings, get_settings
from supportflow.validate.contracts import load_catalogue
from supportflow.validate.snapshot import SnapshotManifest, latest_snapshot, read_split


class TrainingSummary(BaseModel):
    run_id: str
    version: str
    aliases: list[str]
    promoted: bool
    gate_reason: str
    champion_version: str
    base_model: str
    profile: str
    test_accuracy: float
    test_macro_f1: float
    threshold: float
    coverage_at_threshold: float
    precision_at_threshold: float
    train_seconds: float
    tracking_uri: str


@task(name="load-snapshot", cache_policy=NO_CACHE)
def load_snapshot(settings: Settings) -> tuple[SnapshotManifest, LabelledSplits]:
    lake = open_lake(settings)
    manifest = latest_snapshot(lake)
    frames = {split: read_split(lake, manifest.snapshot_id, split) for split in ("train", "validation", "test")}
    catalogue = load_catalogue(settings.contracts_dir).intents
    where = f"snapshot {manifest.snapshot_id} ({manifest.uri})"
    splits = check_training_data(
        frames["train"], frames["validation"], frames["test"], catalogue, settings.min_train_examples_per_intent, where
    )
    return manifest, splits


@task(name="fine-tune", cache_policy=NO_CACHE)
def train_model(splits: LabelledSplits, base: BaseModelChoice, settings: Settings, folder: Path) -> FineTuned:
    return fine_tune(base.location, splits, settings.training_profile(), settings.train_threads, folder)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_model(
    tuned: FineTuned, splits: LabelledSplits, base: BaseModelChoice, settings: Settings, snapshot_id: str
) -> BuiltClassifier:
    return evaluate_classifier(tuned, splits, base, settings.training_profile(), settings.target_precision, snapshot_id)


@task(name="register", cache_policy=NO_CACHE)
def register(
    built: BuiltClassifier, splits: LabelledSplits, manifest: SnapshotManifest, base: BaseModelChoice, settings: Settings, key: str
) -> tuple[str, str]:
    paths = export_onnx(built.folder)
    parities = check_parity(
        built.folder,
        paths,
        splits.test["text"].tolist(),
        built.test_labels,
        built.test.accuracy,
        built.card.max_length,
        settings.train_threads,
    )
    reference = build_reference(
        built.validation_probabilities,
        built.card.labels,
        built.card.threshold,
        splits.train["text"],
        splits.validation["text"],
        built.card.snapshot_id,
    )
    return log_training_run(
        built,
        settings.training_profile(),
        manifest.model_dump(mode="json"),
        parities,
        settings,
        base.source,
        key,
        drift_reference=reference.model_dump(),
    )


@task(name="promotion-gate", cache_policy=NO_CACHE)
def gate(
    run_id: str,
    model_uri: str,
    snapshot_id: str,
    test_macro_f1: float,
    splits: LabelledSplits,
    settings: Settings,
    registered_version: str | None = None,
) -> GateResult:
    client = connect(settings)
    texts = splits.test["text"].tolist()

    def score_on_test(version: ModelVersion) -> float:
        return score_version(settings, str(version.version), texts, splits.label_ids("test"), splits.labels)

    return register_and_gate(client, settings, run_id, model_uri, snapshot_id, test_macro_f1, score_on_test, registered_version)


def training_key(settings: Settings, snapshot_id: str, base: BaseModelChoice) -> str:
    """Same snapshot, profile and base model: the same training, which a re-run must not repeat."""
    profile = settings.training_profile().model_dump_json()
    return text_digest(snapshot_id, settings.train_profile, profile, base.name, settings.target_precision)


def resume(settings: Settings, key: str, splits: LabelledSplits, snapshot_id: str) -> TrainingSummary | None:
    """The summary of a finished training for this key, gating its version first if a killed run could not."""
    client = connect(settings)
    found = find_trained(client, settings, key)
    if found is None:
        return None
    run_id, version = found
    run = client.get_run(run_id)
    metrics, params = run.data.metrics, run.data.params
    name = settings.registered_model_name
    if version is not None and "gate" in version.tags:
        promoted, reason, number = version.tags["gate"] == "passed", version.tags["gate_reason"], str(version.version)
    else:  # trained and logged, then killed before or while registering: register (once) and gate now
        model_uri = f"runs:/{run_id}/{MODEL_NAME_IN_RUN}"
        registered = None if version is None else str(version.version)
        result = gate(run_id, model_uri, snapshot_id, metrics["test_macro_f1"], splits, settings, registered)
        promoted, reason, number = result.promoted, result.reason, result.version
    champion = client.get_model_version_by_alias(name, "champion")
    return TrainingSummary(
        run_id=run_id,
        version=number,
        aliases=["challenger", "champion"] if str(champion.version) == number else ["challenger"],
        promoted=promoted,
        gate_reason=f"{reason} (resumed: run {run_id} had already trained this snapshot)",
        champion_version=str(champion.version),
        base_model=params["base_model"],
        profile=params["profile"],
        test_accuracy=metrics["test_accuracy"],
        test_macro_f1=metrics["test_macro_f1"],
        threshold=metrics["threshold"],
        coverage_at_threshold=metrics["test_coverage_at_threshold"],
        precision_at_threshold=metrics["test_precision_at_threshold"],
        train_seconds=metrics["train_seconds"],
        tracking_uri=settings.mlflow_tracking_uri,
    )


@flow(name="train")
def train(profile: str | None = None) -> TrainingSummary:
    """Fine-tune on the latest snapshot, register the model, and promote it only if it is better."""
    settings = get_settings()
    if profile:
        settings = settings.model_copy(update={"train_profile": profile})
    logger = get_run_logger()
    connect(settings)  # an unreachable store fails here, before minutes of training
    manifest, splits = load_snapshot(settings)
    base = resolve_base_model(settings)
    key = training_key(settings, manifest.snapshot_id, base)
    resumed = resume(settings, key, splits, manifest.snapshot_id)
    if resumed is not None:
        logger.info("%s v%s: %s", settings.registered_model_name, resumed.version, resumed.gate_reason)
        return resumed
    logger.info("training on %s (%s) from %s, profile %s", manifest.snapshot_id, manifest.rows, base.name, settings.train_profile)
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="train-", dir=settings.models_dir))
    try:
        tuned = train_model(splits, base, settings, scratch / "classifier")
        built = evaluate_model(tuned, splits, base, settings, manifest.snapshot_id)
        run_id, model_uri = register(built, splits, manifest, base, settings, key)
        result = gate(run_id, model_uri, manifest.snapshot_id, built.test.macro_f1, splits, settings)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    aliases = ["challenger", "champion"] if result.promoted else ["challenger"]
    summary = TrainingSummary(
        run_id=run_id,
        version=result.version,
        aliases=aliases,
        promoted=result.promoted,
        gate_reason=result.reason,
        champion_version=result.champion_version,
        base_model=base.name,
        profile=settings.train_profile,
        test_accuracy=built.test.accuracy,
        test_macro_f1=built.test.macro_f1,
        threshold=built.card.threshold,
        coverage_at_threshold=built.test_at_threshold.coverage,
        precision_at_threshold=built.test_at_threshold.precision,
        train_seconds=built.train_seconds,
        tracking_uri=settings.mlflow_tracking_uri,
    )
    logger.info("%s v%s %s: %s", settings.registered_model_name, summary.version, "/".join(aliases), summary.gate_reason)
    create_markdown_artifact(
        key="training-report",
        markdown=(
            f"**{settings.registered_model_name} v{summary.version}** ({', '.join(aliases)}), run `{run_id}`\n\n"
            f"test accuracy {summary.test_accuracy:.4f}, macro-F1 {summary.test_macro_f1:.4f}; threshold {summary.threshold:.3f} "
            f"routes {summary.coverage_at_threshold:.1%} of test messages at precision {summary.precision_at_threshold:.1%}\n\n"
            f"gate: {summary.gate_reason}"
        ),
        description="Training, evaluation and promotion summary",
    )
    return summary
