"""What one training run logs to MLflow: everything needed to judge the model and reproduce it, and the model itself as
a portable pyfunc. Plotting and the ONNX variants' choice live here, apart from the registry's aliases, so a command
that only reads or moves an alias (a resumed pipeline, `rollback`) does not load the training stack."""

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from supportflow.classifier.artifacts import MODEL_ARTIFACT
from supportflow.classifier.build import BuiltClassifier
from supportflow.classifier.calibrate import promises, risk_coverage
from supportflow.classifier.evaluate import plot_confusion_matrix, plot_reliability, plot_risk_coverage
from supportflow.classifier.onnx_export import VariantParity, fastest_within, onnx_stand_in
from supportflow.classifier.portable import INPUT_EXAMPLE, MODEL_CODE, pinned_requirements, stage_code
from supportflow.classifier.registry import MODEL_NAME_IN_RUN
from supportflow.drift.figures import REFERENCE_ARTIFACT
from supportflow.settings import Settings, TrainingProfile
from supportflow.tracking import start_run


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
                "precision_confidence": card.precision_confidence,
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
            "sentence_neighbour_weight": card.sentence_neighbour_weight,
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
        metrics |= {f"test_{name}": value for name, value in promises(validation, test, confidence=built.card.precision_confidence).items()}
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
