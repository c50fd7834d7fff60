"""The drift monitor's reads and writes in MLflow: the served model's training reference in, the report out.

Kept apart from `supportflow.drift.figures` so the figures stay plain functions, and light (no `registry`
import, which pulls in transformers): the monitor runs hourly and the notebook imports this. Plots are
drawn on bare matplotlib Figures, so importing this never changes an importer's (a notebook's) backend.
"""

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from supportflow.drift.figures import REFERENCE_ARTIFACT, DriftReference, DriftReport, IntentShare, censored, classified
from supportflow.errors import DriftReferenceError
from supportflow.settings import Settings
from supportflow.tracking import CHAMPION, PRODUCTION, connect, start_run

REPORT_ARTIFACT = "report/drift_report.json"


def _served(client: MlflowClient, name: str) -> ModelVersion:
    """What serves when the turns do not say: the `production` release's version, before the first release the champion."""
    try:
        return client.get_model_version_by_alias(name, PRODUCTION)
    except MlflowException:
        return client.get_model_version_by_alias(name, CHAMPION)


def load_reference(settings: Settings, version: str | None) -> DriftReference:
    """The training reference of a registered version (the served one when the turns do not name one)."""
    client = connect(settings)
    name = settings.registered_model_name
    try:
        model = _served(client, name) if version is None else client.get_model_version(name, version)
    except MlflowException as error:
        wanted = "a production or champion version" if version is None else f"a version {version}"
        raise DriftReferenceError(
            f"{name} has no {wanted} in {settings.mlflow_tracking_uri}, so the turns cannot be compared with its training: {error.message}"
        ) from error
    try:
        data = mlflow.artifacts.load_dict(f"runs:/{model.run_id}/{REFERENCE_ARTIFACT}")
    except (MlflowException, OSError, ValueError) as error:
        raise DriftReferenceError(
            f"{name} v{model.version} (MLflow run {model.run_id}) has no {REFERENCE_ARTIFACT}: it was trained before models carried "
            "a drift reference; retrain it (`supportflow train`) to monitor its traffic"
        ) from error
    return DriftReference.model_validate(data).model_copy(update={"model_version": str(model.version), "run_id": model.run_id})


def plot_confidences(window: np.ndarray, reference: np.ndarray, threshold: float, bins: int, path: Path) -> Path:
    figure = Figure(figsize=(6.5, 4))
    axes = figure.subplots()
    edges = np.linspace(0, 1, bins + 1)
    axes.hist(reference, edges, weights=np.full(len(reference), 1 / len(reference)), alpha=0.5, label=f"reference ({len(reference)})")
    axes.hist(window, edges, weights=np.full(len(window), 1 / max(len(window), 1)), alpha=0.5, label=f"window ({len(window)})")
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.2f}")
    axes.set(xlabel="top confidence (below the threshold: at it)", ylabel="share of messages", title="Confidence: window vs training")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def plot_intent_changes(changes: list[IntentShare], path: Path) -> Path:
    figure = Figure(figsize=(6.5, 0.45 * len(changes) + 1.5))
    axes = figure.subplots()
    rows = np.arange(len(changes))
    axes.barh(rows - 0.2, [c.reference for c in changes], height=0.4, label="reference")
    axes.barh(rows + 0.2, [c.window for c in changes], height=0.4, label="window")
    axes.set_yticks(rows, [c.intent for c in changes])
    axes.invert_yaxis()
    axes.set(xlabel="share of the intents acted on", title="Intent mix: largest changes")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def log_report(report: DriftReport, turns: pd.DataFrame, reference: DriftReference | None, settings: Settings) -> str:
    """One run in the drift experiment: figures as metrics, thresholds as params, the report and its plots."""
    with start_run(settings, settings.drift_experiment, f"drift-{report.window_end:%Y%m%dT%H%M%S}") as run:
        mlflow.log_params(
            {f"threshold.{key}": str(value) for key, value in report.thresholds.model_dump().items()}
            | {"window_start": report.window_start.isoformat(), "window_end": report.window_end.isoformat()}
        )
        mlflow.set_tags(
            {"status": report.status, "drifted": str(report.drifted).lower(), "reference_version": str(report.reference_version)}
        )
        mlflow.log_metrics(report.figures())
        mlflow.log_dict(report.model_dump(mode="json"), REPORT_ARTIFACT)
        if reference is not None and report.n_classified:
            with tempfile.TemporaryDirectory() as scratch:
                window = censored(classified(turns, reference)["confidence"], reference.threshold)
                bins = report.thresholds.confidence_bins
                reference_confidences = censored(reference.confidences, reference.threshold)
                path = plot_confidences(window, reference_confidences, reference.threshold, bins, Path(scratch) / "confidence.png")
                mlflow.log_artifact(str(path), "plots")
                if report.intent_changes:
                    mlflow.log_artifact(str(plot_intent_changes(report.intent_changes, Path(scratch) / "intent_mix.png")), "plots")
    return run.info.run_id


def tag_run(settings: Settings, run_id: str, key: str, value: str) -> None:
    """What happened after the report was logged (the event, the retraining) goes on its run as a tag."""
    connect(settings).set_tag(run_id, key, value)
