"""The `train` flow: snapshot -> fine-tune -> evaluate -> log -> register and gate; a re-run resumes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from supportflow.classifier.base_weights import BaseModelChoice, resolve_base_model
from supportflow.classifier.registry import GateResult
from supportflow.classifier.splits import LabelledSplits
from supportflow.classifier.training import (
    TrainingSummary,
    evaluate_as_configured,
    fine_tune_as_configured,
    gate,
    load_training_splits,
    log_run,
    resume,
    scratch_folder,
    summarise,
    training_key,
)
from supportflow.settings import Settings, get_settings
from supportflow.tracking import connect
from supportflow.validate.snapshot import SnapshotManifest
from supportflow.workspace import with_desk_promises

if TYPE_CHECKING:  # the training stack loads when a step trains (training.py), not when a resumed run imports this
    from supportflow.classifier.build import BuiltClassifier
    from supportflow.classifier.fine_tune import FineTuned


@task(name="load-snapshot", cache_policy=NO_CACHE)
def load_snapshot(settings: Settings) -> tuple[SnapshotManifest, LabelledSplits]:
    return load_training_splits(settings)


@task(name="fine-tune", cache_policy=NO_CACHE)
def fine_tune_step(splits: LabelledSplits, base: BaseModelChoice, settings: Settings, folder: Path) -> FineTuned:
    return fine_tune_as_configured(splits, base, settings, folder)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_step(tuned: FineTuned, splits: LabelledSplits, base: BaseModelChoice, settings: Settings, snapshot_id: str) -> BuiltClassifier:
    return evaluate_as_configured(tuned, splits, base, settings, snapshot_id)


@task(name="register", cache_policy=NO_CACHE)
def log_step(
    built: BuiltClassifier, splits: LabelledSplits, manifest: SnapshotManifest, base: BaseModelChoice, settings: Settings, key: str
) -> tuple[str, str]:
    return log_run(built, splits, manifest, base, settings, key)


@task(name="promotion-gate", cache_policy=NO_CACHE)
def gate_step(
    settings: Settings, run_id: str, model_uri: str, snapshot_id: str, test_macro_f1: float, splits: LabelledSplits
) -> GateResult:
    return gate(settings, run_id, model_uri, snapshot_id, test_macro_f1, splits)


@flow(name="train")
def train(profile: str | None = None) -> TrainingSummary:
    """Fine-tune on the latest snapshot, register the model, and promote it only if it is better."""
    settings = get_settings()
    if profile:
        settings = settings.model_copy(update={"train_profile": profile})
    settings = with_desk_promises(settings)
    logger = get_run_logger()
    connect(settings)  # an unreachable store fails here, before minutes of training
    manifest, splits = load_snapshot(settings)
    if splits.left_out:  # named in the validation report too; the model will never predict them
        left_out = ", ".join(f"{intent} ({n})" for intent, n in splits.left_out.items())
        logger.warning("left out, fewer than %d training examples: %s", settings.min_train_examples_per_intent, left_out)
    base = resolve_base_model(settings)
    key = training_key(settings, manifest.snapshot_id, base)
    summary = resume(settings, key, splits, manifest.snapshot_id)
    if summary is None:
        logger.info("training on %s (%s) from %s, profile %s", manifest.snapshot_id, manifest.rows, base.name, settings.train_profile)
        with scratch_folder(settings) as scratch:
            tuned = fine_tune_step(splits, base, settings, scratch / "classifier")
            built = evaluate_step(tuned, splits, base, settings, manifest.snapshot_id)
            run_id, model_uri = log_step(built, splits, manifest, base, settings, key)
            result = gate_step(settings, run_id, model_uri, manifest.snapshot_id, built.test.macro_f1, splits)
        summary = summarise(settings, run_id, result)
    logger.info("%s v%s %s: %s", settings.registered_model_name, summary.version, "/".join(summary.aliases), summary.gate_reason)
    create_markdown_artifact(key="training-report", markdown=summary.markdown(), description="Training, evaluation and promotion summary")
    return summary
