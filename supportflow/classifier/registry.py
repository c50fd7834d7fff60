"""MLflow: log a training run, register the model, and let only a better model serve.

A new version of `intent-classifier` gets the alias `challenger`. It takes `champion` only when its
test macro-F1 beats the current champion's on the same test split (the champion is re-scored when it
was measured on another snapshot); ties keep the champion. Aliases, not the deprecated stages. A
version is registered only after its run is complete, and deleted again if the gate cannot finish,
so the registry never holds a half-registered model and `champion` never points at a failed one.
"""

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from supportflow.classifier.artifacts import MODEL_ARTIFACT, download_classifier
from supportflow.classifier.build import BuiltClassifier
from supportflow.classifier.calibrate import promises, risk_coverage
from supportflow.classifier.evaluate import plot_confusion_matrix, plot_reliability, plot_risk_coverage
from supportflow.classifier.evaluate_metrics import load_metric
from supportflow.classifier.onnx_export import VariantParity, fastest_within, onnx_stand_in
from supportflow.classifier.portable import INPUT_EXAMPLE, MODEL_CODE, pinned_requirements, stage_code
from supportflow.classifier.predict import IntentClassifier
from supportflow.drift.figures import REFERENCE_ARTIFACT
from supportflow.errors import RegistryError
from supportflow.settings import Settings, TrainingProfile
from supportflow.tracking import CHALLENGER, CHAMPION, connect, start_run

MODEL_NAME_IN_RUN = "model"


@dataclass(frozen=True)
class GateResult:
    version: str
    promoted: bool
    reason: str
    champion_version: str  # who serves after the gate
    champion_macro_f1: float | None  # the previous champion's figure on this test split


def log_training_run(
    built: BuiltClassifier,
    profile: TrainingProfile,
    manifest: dict[str, Any],
    parities: list[VariantParity],
    settings: Settings,
    base_source: str,
    training_key: str = "",
    drift_reference: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """One MLflow run with everything needed to judge and reproduce the model; returns (run id, model URI).

    `drift_reference` (`supportflow.drift.figures.build_reference`) is what the drift monitor compares traffic with.
    """
    card = built.card
    serving_variant = fastest_within(parities, settings.onnx_parity_tolerance, settings.onnx_alarm_tolerance)
    portable_variant = onnx_stand_in(serving_variant)
    with start_run(settings, settings.mlflow_experiment, f"{card.snapshot_id}-{datetime.now(UTC):%Y%m%dT%H%M%S}") as run:
        mlflow.log_params(
            {
                **{f"profile.{key}": value for key, value in profile.model_dump().items()},
                "profile": settings.train_profile,
                "base_model": card.base_model,
                "base_model_source": base_source,
                "threads": settings.train_threads,
                "snapshot_id": card.snapshot_id,
                "labels": len(card.labels),
                "target_precision": card.target_precision,
                "max_wrong_answers": card.max_wrong_answers,
            }
        )
        mlflow.set_tags(
            {
                "snapshot_id": card.snapshot_id,
                "serving_variant": serving_variant,
                "portable_variant": portable_variant,
                "training_key": training_key,
            }
        )
        mlflow.log_dict(manifest, "snapshot/manifest.json")
        if drift_reference is not None:
            mlflow.log_dict(drift_reference, REFERENCE_ARTIFACT)
        metrics = {
            "test_accuracy": built.test.accuracy,
            "test_macro_f1": built.test.macro_f1,
            "test_ece": built.test.expected_calibration_error,
            "validation_accuracy": built.validation.accuracy,
            "validation_macro_f1": built.validation.macro_f1,
            "validation_ece": built.validation.expected_calibration_error,
            "temperature": card.temperature,
            "lexical_weight": card.lexical_weight,
            "prototype_weight": card.prototype_weight,
            "sentence_prototype_weight": card.sentence_prototype_weight,
            # The fine-tuned head alone on the same split: what the other readers and the class balance add.
            "encoder_test_accuracy": built.encoder_test.accuracy,
            "encoder_test_macro_f1": built.encoder_test.macro_f1,
            "threshold": card.threshold,
            "validation_coverage_at_threshold": card.coverage_at_threshold,
            "validation_precision_at_threshold": card.precision_at_threshold,
            "test_coverage_at_threshold": built.test_at_threshold.coverage,
            "test_precision_at_threshold": built.test_at_threshold.precision,
            "test_wrong_at_threshold": built.test_at_threshold.wrong,  # the share of all test messages answered wrongly
            "train_seconds": built.train_seconds,
            "train_loss": built.train_loss,
            "ood_threshold": built.detector.threshold,
            "ood_quantile": built.detector.quantile,
            # In-scope test messages the detector calls unknown: its false alarms, which the bot hands off.
            "test_out_of_scope_rate": float(built.test_out_of_scope.mean()),
        }
        if built.detector.vocabulary is not None:
            metrics["ood_vocabulary_threshold"] = built.detector.vocabulary.threshold  # the share of unfamiliar words flagged
        validation = (built.validation_probabilities, built.validation_labels)
        test = (built.test_probabilities, built.test_labels)
        metrics |= {f"test_{name}": value for name, value in promises(validation, test).items()}
        for parity in parities:
            metrics[f"onnx_{parity.variant}_test_accuracy"] = parity.accuracy
            metrics[f"onnx_{parity.variant}_seconds_per_100"] = parity.seconds_per_100
            metrics[f"onnx_{parity.variant}_test_out_of_scope_rate"] = parity.out_of_scope_rate
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as scratch:
            plots = Path(scratch)
            mlflow.log_artifact(str(plot_confusion_matrix(built.test.confusion, card.labels, plots / "confusion_matrix.png")), "plots")
            reliability = plot_reliability(built.test_probabilities, built.test_labels, plots / "reliability_diagram.png")
            mlflow.log_artifact(str(reliability), "plots")
            curves = {"validation": risk_coverage(*validation), "test": risk_coverage(*test)}
            risk = plot_risk_coverage(curves, card.threshold, card.target_precision, plots / "risk_coverage.png")
            mlflow.log_artifact(str(risk), "plots")
        mlflow.log_table(
            pd.concat([curve.assign(split=split) for split, curve in curves.items()], ignore_index=True), "reports/risk_coverage.json"
        )
        mlflow.log_table(built.test.per_intent, "reports/per_intent.json")
        mlflow.log_dict(
            {"pairs": built.test.most_confused(card.labels, top=20).to_dict("records")},
            "reports/most_confused.json",
        )
        with tempfile.TemporaryDirectory() as scratch:
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                python_model=MODEL_CODE,
                artifacts={MODEL_ARTIFACT: str(built.folder)},
                code_paths=[str(stage_code(Path(scratch)))],
                pip_requirements=pinned_requirements(),
                input_example=INPUT_EXAMPLE,
                model_config={"variant": portable_variant, "threads": settings.serving_threads},
                metadata={"classifier": json.loads((built.folder / "classifier.json").read_text())},
            )
    return run.info.run_id, info.model_uri


def _champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None  # no registered model yet, or no champion alias


def register_and_gate(
    client: MlflowClient,
    settings: Settings,
    run_id: str,
    model_uri: str,
    snapshot_id: str,
    test_macro_f1: float,
    score_on_test: Callable[[ModelVersion], float],
    registered_version: str | None = None,
) -> GateResult:
    """Register as `challenger`, then promote to `champion` only if strictly better on this test split.

    `score_on_test` re-scores a version on this run's test split; it is called for a champion that
    was measured on another snapshot.
    """
    name = settings.registered_model_name
    if registered_version is None:
        try:
            tags = {"snapshot_id": snapshot_id, "test_macro_f1": f"{test_macro_f1:.6f}"}
            registered = mlflow.register_model(model_uri, name, tags=tags)
        except MlflowException as error:
            raise RegistryError(f"registering {model_uri} as {name} in {settings.mlflow_tracking_uri} failed: {error.message}") from error
        registered_version = str(registered.version)  # an int in MLflow 3's entities, a string in its API
    version = registered_version  # a re-run gates the version a killed run registered, instead of registering another
    champion: ModelVersion | None = None
    try:
        client.set_registered_model_alias(name, CHALLENGER, version)
        champion = _champion(client, name)
        if champion is None:
            champion_f1, promoted, reason = None, True, "no champion yet"
        else:
            same_split = champion.tags.get("snapshot_id") == snapshot_id and "test_macro_f1" in champion.tags
            champion_f1 = float(champion.tags["test_macro_f1"]) if same_split else score_on_test(champion)
            promoted = test_macro_f1 > champion_f1
            verdict = "beats" if promoted else "does not beat"
            reason = (
                f"test macro-F1 {test_macro_f1:.4f} {verdict} champion v{champion.version}'s {champion_f1:.4f} on snapshot {snapshot_id}"
            )
        if promoted:
            if champion is not None:
                client.set_model_version_tag(name, version, "previous_champion", str(champion.version))
            client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "gate", "passed" if promoted else "failed")
        client.set_model_version_tag(name, version, "gate_reason", reason)
        client.set_tag(run_id, "gate", "passed" if promoted else "failed")
        client.set_tag(run_id, "gate_reason", reason)
    except Exception as error:
        _unregister(client, name, version, None if champion is None else str(champion.version))
        if isinstance(error, RegistryError):
            raise
        raise RegistryError(f"the promotion gate for {name} v{version} failed ({error}); the version was removed again") from error
    serving = version if promoted else str(champion.version)  # type: ignore[union-attr]
    return GateResult(version=version, promoted=promoted, reason=reason, champion_version=serving, champion_macro_f1=champion_f1)


def _unregister(client: MlflowClient, name: str, version: str, previous_champion: str | None) -> None:
    """Undo a registration whose gate did not finish, handing `champion` back if it had already moved."""
    current = _champion(client, name)
    if current is not None and str(current.version) == version:
        if previous_champion is None:
            client.delete_registered_model_alias(name, CHAMPION)
        else:
            client.set_registered_model_alias(name, CHAMPION, previous_champion)
    client.delete_model_version(name, version)


def rollback(settings: Settings) -> tuple[str, str]:
    """Move `champion` back to the version it replaced; returns (from version, to version)."""
    client = connect(settings)
    name = settings.registered_model_name
    champion = _champion(client, name)
    if champion is None:
        raise RegistryError(f"{name} has no champion in {settings.mlflow_tracking_uri}; nothing to roll back")
    previous = champion.tags.get("previous_champion")
    if not previous:
        raise RegistryError(f"{name} v{champion.version} is the first champion; there is no earlier version to roll back to")
    try:
        client.get_model_version(name, previous)
    except MlflowException as error:
        raise RegistryError(f"{name} v{previous}, the previous champion, no longer exists: {error.message}") from error
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, str(champion.version), "rolled_back_at", datetime.now(UTC).isoformat(timespec="seconds"))
    return str(champion.version), previous


def score_version(settings: Settings, version: str, texts: list[str], label_ids: Sequence[int], labels: list[str]) -> float:
    """A registered version's macro-F1 on the given split, matched by intent name (its label map may differ)."""
    classifier = IntentClassifier(download_classifier(settings, version), threads=settings.train_threads)
    index = {label: i for i, label in enumerate(labels)}
    unknown = len(labels)  # an intent this split does not know counts as a wrong answer
    predicted = [index.get(result["intent"], unknown) for result in classifier.classify(texts, top_k=1)]
    return load_metric("macro_f1").compute(predictions=predicted, references=list(label_ids))["macro_f1"]


def registered_accuracy(settings: Settings, version: str) -> float:
    """The test accuracy a version was registered with: what its bundle must come close to in the smoke test."""
    client = connect(settings)
    run_id = client.get_model_version(settings.registered_model_name, version).run_id
    return client.get_run(run_id).data.metrics["test_accuracy"]


def find_trained(client: MlflowClient, settings: Settings, training_key: str) -> tuple[str, ModelVersion | None] | None:
    """A finished training run for this key, and its registered version if it got that far.

    The pipeline's resume: a run killed after training and logging must not train and register again.
    """
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.training_key = '{training_key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    run_id = runs[0].info.run_id
    versions = client.search_model_versions(f"name = '{settings.registered_model_name}' and run_id = '{run_id}'")
    return run_id, (versions[0] if versions else None)
