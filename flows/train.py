"""The `train` flow: snapshot -> train -> evaluate -> register -> promotion gate."""

import shutil
import tempfile
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from supportflow.base_model import BaseModelChoice, resolve_base_model
from supportflow.classifier import BuiltClassifier, evaluate_classifier
from supportflow.contracts import load_catalogue
from supportflow.drift import build_reference
from supportflow.lake import open_lake
from supportflow.onnx_export import check_parity, export_onnx
from supportflow.registry import GateResult, connect, log_training_run, register_and_gate, score_version
from supportflow.settings import Settings, get_settings
from supportflow.snapshot import SnapshotManifest, latest_snapshot, read_split
from supportflow.train import FineTuned, LabelledSplits, check_training_data, fine_tune


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
    built: BuiltClassifier, splits: LabelledSplits, manifest: SnapshotManifest, base: BaseModelChoice, settings: Settings
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
        built, settings.training_profile(), manifest.model_dump(mode="json"), parities, settings, base.source, reference.model_dump()
    )


@task(name="promotion-gate", cache_policy=NO_CACHE)
def gate(run_id: str, model_uri: str, built: BuiltClassifier, splits: LabelledSplits, settings: Settings) -> GateResult:
    client = connect(settings)
    texts = splits.test["text"].tolist()

    def score_on_test(version: ModelVersion) -> float:
        return score_version(settings, str(version.version), texts, built.test_labels, splits.labels)

    return register_and_gate(client, settings, run_id, model_uri, built.card.snapshot_id, built.test.macro_f1, score_on_test)


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
    logger.info("training on %s (%s) from %s, profile %s", manifest.snapshot_id, manifest.rows, base.name, settings.train_profile)
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="train-", dir=settings.models_dir))
    try:
        tuned = train_model(splits, base, settings, scratch / "classifier")
        built = evaluate_model(tuned, splits, base, settings, manifest.snapshot_id)
        run_id, model_uri = register(built, splits, manifest, base, settings)
        result = gate(run_id, model_uri, built, splits, settings)
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
