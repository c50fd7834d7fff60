"""The `review_queue` flow: pick the turns worth an agent's label from the turn log, for `GET /agent/review`.

Deployed hourly (prefect.yaml); the selection is supportflow/review/ (the queue) and supportflow/review/selection.py.
"""

from datetime import datetime

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from supportflow.bot.turns import read_turns
from supportflow.drift.events import window_bounds
from supportflow.kb.embeddings import embedder
from supportflow.lake import open_lake
from supportflow.review.queue import MAX_QUEUE, ReviewQueue, build_queue, labelled_turns, write_queue
from supportflow.settings import Settings, get_settings


@task(name="read-turns", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def read_window(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    return read_turns(open_lake(settings), start, end)


@task(name="build-queue", cache_policy=NO_CACHE)
def build(settings: Settings, turns: pd.DataFrame, limit: int) -> ReviewQueue:
    lake = open_lake(settings)
    return build_queue(turns, embedder(settings.kb_model_cache).embed, labelled_turns(lake), limit)


@task(name="write-queue", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def write(settings: Settings, queue: ReviewQueue) -> str:
    return write_queue(open_lake(settings), queue)


@flow(name="review-queue")
def review_queue(window_hours: float = 168.0, end: str | None = None, limit: int = MAX_QUEUE) -> ReviewQueue:
    """Rebuild the queue from the turns of the `window_hours` before `end` (ISO, default now)."""
    settings = get_settings()
    start, until = window_bounds(window_hours, end)
    queue = build(settings, read_window(settings, start, until), limit)
    path = write(settings, queue)
    get_run_logger().info("%d turns to label, written to %s", len(queue.items), path)
    create_markdown_artifact(key="review-queue", markdown=queue.markdown(), description="Turns worth an agent's label")
    return queue
