"""The `knowledge_gaps` flow: the questions the knowledge base failed, grouped by topic, for the people who write it.

Deployed daily (prefect.yaml). Writes the report to the lake (which `GET /agent/gaps` serves), to MLflow (a table
and the JSON) and as a Prefect markdown artifact; the report itself is supportflow/review/gaps.py.
"""

from datetime import datetime

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from supportflow.bot.feedback import read_ratings
from supportflow.bot.turns import read_turns
from supportflow.drift.events import window_bounds
from supportflow.errors import SupportflowError
from supportflow.kb.embeddings import embedder
from supportflow.lake import open_lake
from supportflow.review import gaps
from supportflow.review.tracking import log_gap_report
from supportflow.settings import Settings, get_settings


@task(name="read-turns", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def read_window(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    return read_turns(open_lake(settings), start, end)


@task(name="read-ratings", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def read_window_ratings(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    return read_ratings(open_lake(settings), start, end)


@task(name="served-threshold", cache_policy=NO_CACHE)
def served_threshold(settings: Settings) -> float:
    """The served knowledge base's calibrated threshold, below which an answer counts as weak; the default without one."""
    from supportflow.kb.build import open_knowledge_base

    try:
        return open_knowledge_base(settings).threshold
    except SupportflowError as error:
        get_run_logger().warning(
            "no served knowledge base (%s): low scores are those below the default %s", error, settings.kb_default_threshold
        )
        return settings.kb_default_threshold


@task(name="group-gaps", cache_policy=NO_CACHE)
def group(
    settings: Settings, turns: pd.DataFrame, ratings: pd.DataFrame, threshold: float, start: datetime, end: datetime, distance: float
) -> gaps.GapReport:
    return gaps.knowledge_gaps(turns, embedder(settings.kb_model_cache).embed, threshold, start, end, distance, ratings)


@task(name="record-gaps", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def record(settings: Settings, report: gaps.GapReport) -> tuple[str, str]:
    return gaps.write_report(open_lake(settings), report), log_gap_report(report, settings)


@flow(name="knowledge-gaps")
def knowledge_gaps(window_hours: float = 168.0, end: str | None = None, distance: float = gaps.DEFAULT_DISTANCE) -> gaps.GapReport:
    """Report the gaps in the turns of the `window_hours` before `end` (ISO, default now)."""
    settings = get_settings()
    start, until = window_bounds(window_hours, end)
    turns, ratings = read_window(settings, start, until), read_window_ratings(settings, start, until)
    report = group(settings, turns, ratings, served_threshold(settings), start, until, distance)
    path, run_id = record(settings, report)
    get_run_logger().info("%d questions in %d topics: %s (MLflow run %s)", report.questions, len(report.topics), path, run_id)
    create_markdown_artifact(key="knowledge-gaps", markdown=report.markdown(run_id), description="What the knowledge base does not answer")
    return report
