"""The train stage from snapshot to gated version, as the `train` flow's steps call it.

A training is identified by its inputs (`training_key`): the same snapshot, profile, base model and target
precision train the same model, so a re-run finds the finished run in MLflow and resumes from it instead of
training again, gating the version first if a killed run could not. The summary a person reads is read back
from the run itself, so a resumed training and a fresh one report the same figures the same way.

The training stack (torch, transformers, scikit-learn, matplotlib) is imported by the steps that train, export and
log, not with this module: a pipeline that resumes a finished training, and everything that imports the flows (the
CLI, Prefect's workers), starts without loading it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.entities.model_registry import ModelVersion
from pydantic import BaseModel

from supportflow.classifier.base_weights import BaseModelChoice
from supportflow.classifier.fusion import FusionChoice
from supportflow.classifier.registry import MODEL_NAME_IN_RUN, GateResult, find_trained, register_and_gate, score_version
from supportflow.classifier.splits import LabelledSplits, check_training_data
from supportflow.digest import text_digest
from supportflow.drift.figures import build_reference
from supportflow.lake import open_lake
from supportflow.settings import Settings
from supportflow.tracking import CHALLENGER, CHAMPION, connect
from supportflow.validate.catalogue import load_catalogue
from supportflow.validate.snapshot import SnapshotManifest, latest_snapshot, read_split

if TYPE_CHECKING:
    from supportflow.classifier.build import BuiltClassifier
    from supportflow.classifier.fine_tune import FineTuned


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
    wrong_at_threshold: float
    train_seconds: float
    tracking_uri: str

    def lines(self) -> list[str]:
        return [
            f"intent-classifier v{self.version} @{', @'.join(self.aliases)} (run {self.run_id}, {self.profile} profile)",
            f"  test accuracy {self.test_accuracy:.4f}, macro-F1 {self.test_macro_f1:.4f}; base {self.base_model}",
            f"  fallback threshold {self.threshold:.4g}: routes {self.coverage_at_threshold:.1%} of test messages"
            f" at precision {self.precision_at_threshold:.1%}, {self.wrong_at_threshold:.1%} of all answered wrongly;"
            f" trained in {self.train_seconds:.0f} s",
            f"  gate: {self.gate_reason}; champion is v{self.champion_version}",
        ]

    def markdown(self) -> str:
        return (
            f"**intent-classifier v{self.version}** ({', '.join(self.aliases)}), run `{self.run_id}`\n\n"
            f"test accuracy {self.test_accuracy:.4f}, macro-F1 {self.test_macro_f1:.4f}; threshold {self.threshold:.3f} "
            f"routes {self.coverage_at_threshold:.1%} of test messages at precision {self.precision_at_threshold:.1%}\n\n"
            f"gate: {self.gate_reason}"
        )


def load_training_splits(settings: Settings) -> tuple[SnapshotManifest, LabelledSplits]:
    """The latest snapshot's splits, checked against the catalogue before any compute is spent on them."""
    lake = open_lake(settings)
    manifest = latest_snapshot(lake)
    frames = {split: read_split(lake, manifest.snapshot_id, split) for split in ("train", "validation", "test")}
    catalogue = load_catalogue(settings.catalogue_file).intents
    where = f"snapshot {manifest.snapshot_id} ({manifest.uri})"
    splits = check_training_data(
        frames["train"], frames["validation"], frames["test"], catalogue, settings.min_train_examples_per_intent, where
    )
    return manifest, splits


def training_key(settings: Settings, snapshot_id: str, base: BaseModelChoice) -> str:
    """Same snapshot, profile, base model and thresholds' promises: the same training, which a re-run must not repeat."""
    profile = settings.training_profile().model_dump_json()
    return text_digest(
        snapshot_id,
        settings.train_profile,
        profile,
        base.name,
        settings.target_precision,
        settings.ood_quantile,
        FusionChoice.of(settings),
        settings.max_wrong_answers,
        settings.precision_confidence,
        settings.cross_fit_folds,
        settings.cross_fit_max_examples,
    )


def evaluate_as_configured(
    tuned: FineTuned, splits: LabelledSplits, base: BaseModelChoice, settings: Settings, snapshot_id: str
) -> BuiltClassifier:
    """Everything after fine-tuning, with what the settings choose (profile, both promises, the detector's quantile,
    the readers): the train flow and the benchmarks complete a model alike, so a benchmark's figures are the
    pipeline's, and a setting added later reaches both."""
    from supportflow.classifier.build import evaluate_classifier
    from supportflow.classifier.cross_fit import CrossFitChoice

    profile = settings.training_profile()
    return evaluate_classifier(
        tuned,
        splits,
        base,
        profile,
        settings.target_precision,
        snapshot_id,
        settings.ood_quantile,
        FusionChoice.of(settings),
        settings.max_wrong_answers,
        CrossFitChoice.of(settings, len(splits.train) + len(splits.validation)),
        settings.precision_confidence,
    )


def fine_tune_as_configured(splits: LabelledSplits, base: BaseModelChoice, settings: Settings, folder: Path) -> FineTuned:
    """Fine-tune into `folder` with the settings' profile, threads and device."""
    from supportflow.classifier.fine_tune import fine_tune

    return fine_tune(base.location, splits, settings.training_profile(), settings.train_threads, folder, settings.train_device)


def build_as_configured(
    splits: LabelledSplits, base: BaseModelChoice, settings: Settings, folder: Path, snapshot_id: str
) -> BuiltClassifier:
    """`fine_tune_as_configured`, then `evaluate_as_configured`."""
    tuned = fine_tune_as_configured(splits, base, settings, folder)
    return evaluate_as_configured(tuned, splits, base, settings, snapshot_id)


def reuse_fine_tuned(
    source: Path, target: Path, splits: LabelledSplits, base: BaseModelChoice, settings: Settings, snapshot_id: str
) -> BuiltClassifier:
    """`evaluate_as_configured` on an encoder `fine_tune` wrote earlier with this profile on these splits (a copy of
    it, in `target`), its run's seconds read from the meta.json beside it: the benchmarks re-score a kept encoder
    after a change that comes after fine-tuning, without paying for the fine-tuning again."""
    from supportflow.classifier.fine_tune import FineTuned

    meta = json.loads((source.parent / "meta.json").read_text())
    shutil.copytree(source, target)
    tuned = FineTuned(model_dir=target, train_seconds=float(meta["train_seconds"]), train_loss=float("nan"))
    return evaluate_as_configured(tuned, splits, base, settings, snapshot_id)


@contextmanager
def scratch_folder(settings: Settings) -> Iterator[Path]:
    """Where one training writes its checkpoints and exports; gone afterwards, whatever happened."""
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="train-", dir=settings.models_dir))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def log_run(
    built: BuiltClassifier, splits: LabelledSplits, manifest: SnapshotManifest, base: BaseModelChoice, settings: Settings, key: str
) -> tuple[str, str]:
    """Export ONNX, check its parity, and log the run with the drift reference; returns (run id, model URI)."""
    from supportflow.classifier.logged_run import log_training_run
    from supportflow.classifier.onnx_export import export_and_check

    parities = export_and_check(built, splits.test["text"].tolist(), settings.train_threads)
    reference = build_reference(
        built.validation_probabilities,
        built.card.labels,
        built.card.threshold,
        splits.train["text"],
        splits.validation["text"],
        built.card.snapshot_id,
    )
    profile = settings.training_profile()
    manifest_json = manifest.model_dump(mode="json")
    return log_training_run(built, profile, manifest_json, parities, settings, base.source, key, drift_reference=reference.model_dump())


def gate(
    settings: Settings,
    run_id: str,
    model_uri: str,
    snapshot_id: str,
    test_macro_f1: float,
    splits: LabelledSplits,
    registered_version: str | None = None,
) -> GateResult:
    """Register and gate, re-scoring a champion measured on another snapshot on this run's test split."""
    texts = splits.test["text"].tolist()

    def score_on_test(version: ModelVersion) -> float:
        return score_version(settings, str(version.version), texts, splits.label_ids("test"), splits.labels)

    return register_and_gate(connect(settings), settings, run_id, model_uri, snapshot_id, test_macro_f1, score_on_test, registered_version)


def summarise(settings: Settings, run_id: str, result: GateResult, resumed: bool = False) -> TrainingSummary:
    """The summary, read back from the logged run: the same figures whether this run trained or resumed."""
    client = connect(settings)
    run = client.get_run(run_id)
    metrics, params = run.data.metrics, run.data.params
    champion = str(client.get_model_version_by_alias(settings.registered_model_name, CHAMPION).version)
    reason = f"{result.reason} (resumed: run {run_id} had already trained this snapshot)" if resumed else result.reason
    return TrainingSummary(
        run_id=run_id,
        version=result.version,
        aliases=[CHALLENGER, CHAMPION] if champion == result.version else [CHALLENGER],
        promoted=result.promoted,
        gate_reason=reason,
        champion_version=champion,
        base_model=params["base_model"],
        profile=params["profile"],
        test_accuracy=metrics["test_accuracy"],
        test_macro_f1=metrics["test_macro_f1"],
        threshold=metrics["threshold"],
        coverage_at_threshold=metrics["test_coverage_at_threshold"],
        precision_at_threshold=metrics["test_precision_at_threshold"],
        wrong_at_threshold=metrics["test_wrong_at_threshold"],
        train_seconds=metrics["train_seconds"],
        tracking_uri=settings.mlflow_tracking_uri,
    )


def resume(settings: Settings, key: str, splits: LabelledSplits, snapshot_id: str) -> TrainingSummary | None:
    """The summary of a finished training for this key, gating its version first if a killed run could not."""
    found = find_trained(connect(settings), settings, key)
    if found is None:
        return None
    run_id, version = found
    if version is not None and "gate" in version.tags:
        number = str(version.version)
        passed = version.tags["gate"] == "passed"
        result = GateResult(
            version=number, promoted=passed, reason=version.tags["gate_reason"], champion_version=number, champion_macro_f1=None
        )
    else:  # trained and logged, then killed before or while registering: register (once) and gate now
        test_macro_f1 = connect(settings).get_run(run_id).data.metrics["test_macro_f1"]
        registered = None if version is None else str(version.version)
        result = gate(settings, run_id, f"runs:/{run_id}/{MODEL_NAME_IN_RUN}", snapshot_id, test_macro_f1, splits, registered)
    return summarise(settings, run_id, result, resumed=True)
