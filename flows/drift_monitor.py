"""The `drift_monitor` flow: compare the last window of the turn log with the served model's training.

Deployed hourly (prefect.yaml). When a threshold is crossed it emits `supportflow.drift.detected`, on which
the retraining deployment triggers; the embedded demo passes `retrain=True` to run the pipeline directly.
"""

from datetime import UTC, datetime, timedelta

import pandas as pd
from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.events import emit_event
from prefect.states import State

from supportflow.bot.turns import read_turns
from supportflow.drift.figures import DriftReference, DriftReport, compute_drift, window_model_version
from supportflow.drift.tracking import load_reference, log_report, report_markdown, tag_run
from supportflow.errors import DriftReferenceError, SupportflowError
from supportflow.lake import open_lake
from supportflow.settings import Settings, get_settings

DRIFT_EVENT = "supportflow.drift.detected"


def _worth_retrying(task: Task, task_run: TaskRun, state: State) -> bool:
    """An unreachable store may come back; a model without a reference will not."""
    try:
        state.result()
    except DriftReferenceError:
        return False
    except Exception:
        return True
    return False


@task(name="read-window", cache_policy=NO_CACHE)
def read_window(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    return read_turns(open_lake(settings), start, end)


@task(name="load-reference", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=_worth_retrying)
def reference_for(settings: Settings, version: str | None) -> DriftReference:
    return load_reference(settings, version)


@task(name="log-report", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def record(report: DriftReport, turns: pd.DataFrame, reference: DriftReference | None, settings: Settings) -> str:
    return log_report(report, turns, reference, settings)


def window_bounds(window_hours: float, end: str | None) -> tuple[datetime, datetime]:
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


@flow(name="drift-monitor")
def drift_monitor(window_hours: float = 1.0, end: str | None = None, retrain: bool = False) -> DriftReport:
    """Report drift over the `window_hours` before `end` (ISO, default now); with `retrain`, retrain on drift."""
    settings = get_settings()
    logger = get_run_logger()
    start, until = window_bounds(window_hours, end)
    turns = read_window(settings, start, until)
    reference = reference_for(settings, window_model_version(turns)) if len(turns) else None
    report = compute_drift(turns, reference, settings.drift, start, until)
    run_id = record(report, turns, reference, settings)
    logger.info("%s (MLflow run %s)", report.headline(), run_id)
    if report.drifted:
        event_id = emit_drift_event(report, run_id, settings)
        tag_run(settings, run_id, "drift_event_id", str(event_id))
        logger.info("emitted %s (event %s)", DRIFT_EVENT, event_id)
    if retrain and report.drifted:
        from flows.pipeline import pipeline  # the whole training stack: imported only when it runs

        logger.info("retraining on the lake's tickets and the agents' labels")
        pipeline(paths=[])
        report.retraining = "ran the pipeline on the lake's tickets and the agents' labels"
    elif retrain:
        report.retraining = "requested, not needed: no drift"
    elif report.drifted:
        report.retraining = f"left to the deployment triggered by {DRIFT_EVENT}"
    tag_run(settings, run_id, "retraining", report.retraining)
    create_markdown_artifact(key="drift-report", markdown=report_markdown(report, run_id), description="Drift monitor report")
    return report
