"""The event drift raises in Prefect, on which the `retrain-on-drift` deployment (prefect.yaml) retrains.

The event names the model and the version whose traffic drifted, links the MLflow run that holds the
report, and carries the figures, so whoever looks at the triggered run can see why it ran.
"""

from datetime import UTC, datetime, timedelta

from prefect.events import emit_event

from supportflow.drift.figures import DriftReport
from supportflow.errors import SupportflowError
from supportflow.settings import Settings

DRIFT_EVENT = "supportflow.drift.detected"


def window_bounds(window_hours: float, end: str | None) -> tuple[datetime, datetime]:
    """The monitored window as UTC datetimes, from the CLI's or the deployment's plain parameters."""
    if window_hours <= 0:
        raise SupportflowError(f"window_hours must be positive, not {window_hours}")
    if end is None:
        until = datetime.now(UTC)
    else:
        try:
            until = datetime.fromisoformat(end)
        except ValueError as error:
            raise SupportflowError(f"end {end!r} is not an ISO date-time such as 2026-11-24T09:00:00+00:00") from error
        until = until.replace(tzinfo=UTC) if until.tzinfo is None else until.astimezone(UTC)
    return until - timedelta(hours=window_hours), until


def emit_drift_event(report: DriftReport, run_id: str, settings: Settings) -> str | None:
    """The event the retraining deployment's trigger listens for; returns its id (None when events are off)."""
    name = settings.registered_model_name
    event = emit_event(
        event=DRIFT_EVENT,
        resource={
            "prefect.resource.id": f"supportflow.model.{name}",
            "prefect.resource.name": name,
            "supportflow.model.version": str(report.reference_version),
        },
        related=[{"prefect.resource.id": f"mlflow.run.{run_id}", "prefect.resource.role": "drift-report"}],
        payload={
            "window_start": report.window_start.isoformat(),
            "window_end": report.window_end.isoformat(),
            "model_version": report.reference_version,
            "mlflow_run_id": run_id,
            "breaches": report.breaches,
            "figures": report.figures(),
        },
    )
    return None if event is None else str(event.id)
