"""The `drift_monitor` flow: compare the last window of the turn log with the served model's training.

Deployed hourly (prefect.yaml). When a threshold is crossed it emits `supportflow.drift.detected`, on which
the retraining deployment triggers; the embedded demo passes `retrain=True` to run the pipeline directly.
"""

from datetime import datetime

import pandas as pd
from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from supportflow.bot.feedback import read_ratings
from supportflow.bot.turns import read_turns
from supportflow.drift.events import DRIFT_EVENT, emit_drift_event, window_bounds
from supportflow.drift.figures import DriftReference, DriftReport, compute_drift, window_model_version
from supportflow.drift.tracking import load_reference, log_report, tag_run
from supportflow.errors import DriftReferenceError
from supportflow.lake import open_lake
from supportflow.settings import Settings, get_settings


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


@task(name="read-ratings", cache_policy=NO_CACHE)
def read_window_ratings(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    return read_ratings(open_lake(settings), start, end)


@task(name="load-reference", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=_worth_retrying)
def reference_for(settings: Settings, version: str | None) -> DriftReference:
    return load_reference(settings, version)


@task(name="log-report", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def record(report: DriftReport, turns: pd.DataFrame, reference: DriftReference | None, settings: Settings) -> str:
    return log_report(report, turns, reference, settings)


@flow(name="drift-monitor")
def drift_monitor(window_hours: float = 1.0, end: str | None = None, retrain: bool = False) -> DriftReport:
    """Report drift over the `window_hours` before `end` (ISO, default now); with `retrain`, retrain on drift."""
    settings = get_settings()
    logger = get_run_logger()
    start, until = window_bounds(window_hours, end)
    turns = read_window(settings, start, until)
    reference = reference_for(settings, window_model_version(turns)) if len(turns) else None
    ratings = read_window_ratings(settings, start, until)
    report = compute_drift(turns, reference, settings.drift, start, until, ratings=ratings)
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
    create_markdown_artifact(key="drift-report", markdown=report.markdown(run_id), description="Drift monitor report")
    return report
