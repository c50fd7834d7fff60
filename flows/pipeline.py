"""The `pipeline` flow: the whole loop, end to end, on whatever the configuration points at.

ingest -> validate -> train (evaluate, register, gate) -> kb_index -> dialogue -> release (bundle, smoke
test on spare ports, promote) -> report. Every stage can be re-run: ingest and validate are idempotent by
content, training resumes from the registry (a finished training of the same snapshot is not repeated),
the knowledge base and dialogue stages are cached on their inputs (their results on the lake, flows/results.py,
so a run resumed on another machine or pod finds them), bundles are content-addressed and a
passed smoke test is cached on the bundles. So a run killed anywhere is finished by running it again.
"""

import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext

from flows.dialogue import dialogue
from flows.ingest import ingest
from flows.kb_index import kb_index
from flows.release import release
from flows.results import on_the_lake
from flows.train import train
from flows.validate import validate
from supportflow.classifier.registry import registered_accuracy
from supportflow.dialogue.build import DialogueBuild
from supportflow.kb.build import BuildReport, keyword_index
from supportflow.pipeline import PipelineSummary, dialogue_stage_key, kb_stage_key, ticket_exports
from supportflow.settings import Settings, get_settings

CACHE_FOR = timedelta(days=30)
T = TypeVar("T")


def _kb_key(context: TaskRunContext, parameters: dict) -> str:
    return kb_stage_key(parameters["settings"], parameters["snapshot_id"])


def _dialogue_key(context: TaskRunContext, parameters: dict) -> str:
    return dialogue_stage_key(parameters["settings"], parameters["champion_version"], parameters["snapshot_id"])


@task(name="kb-index-stage", cache_key_fn=_kb_key, cache_expiration=CACHE_FOR, persist_result=True)
def kb_stage(settings: Settings, snapshot_id: str) -> BuildReport:
    return kb_index()


@task(name="dialogue-stage", cache_key_fn=_dialogue_key, cache_expiration=CACHE_FOR, persist_result=True)
def dialogue_stage(settings: Settings, champion_version: str, snapshot_id: str) -> DialogueBuild:
    return dialogue()


@flow(name="pipeline")
def pipeline(paths: list[str] | None = None, source: str | None = None, profile: str | None = None) -> PipelineSummary:
    """`paths=None` ingests the workspace's ticket sources; `paths=[]` ingests nothing new (a retraining on the
    lake's tickets and the agents' labels); `profile` picks the training profile (default: the settings')."""
    settings = get_settings()
    logger = get_run_logger()
    stages: dict[str, float] = {}
    started = time.perf_counter()

    def timed(name: str, stage: Callable[[], T]) -> T:
        begun = time.perf_counter()
        logger.info("stage %s: started", name)
        result = stage()
        stages[name] = round(time.perf_counter() - begun, 2)
        logger.info("stage %s: %.1f s", name, stages[name])
        return result

    exports = ticket_exports(settings, paths, source)
    reports = timed(
        "ingest",
        lambda: [
            report
            for files, how in exports
            for report in ingest(files, how.source, how.format, how.field_map, how.encoding, how.zendesk_intent_field_id)
        ],
    )
    snapshot = timed("validate", validate)
    training = timed("train", lambda: train(profile=profile))
    served = keyword_index(settings).serving() is not None
    kb_cached, dialogue_cached = on_the_lake(kb_stage, settings), on_the_lake(dialogue_stage, settings)
    knowledge = timed("kb_index", lambda: kb_cached.with_options(refresh_cache=not served)(settings, snapshot.snapshot_id))
    champion = training.champion_version
    built = timed("dialogue", lambda: dialogue_cached(settings, champion, snapshot.snapshot_id))
    if not built.model.exists():  # the cached build's archive was removed since: build it again
        built = timed("dialogue", lambda: dialogue_cached.with_options(refresh_cache=True)(settings, champion, snapshot.snapshot_id))
    accuracy = registered_accuracy(settings, champion)
    released = timed("release", lambda: release(champion, str(built.model), knowledge.build_id, accuracy))
    summary = PipelineSummary(
        ingest=reports,
        snapshot=snapshot,
        training=training,
        knowledge_base=knowledge,
        dialogue=built,
        release=released,
        stages=stages,
        total_seconds=round(time.perf_counter() - started, 2),
    )
    create_markdown_artifact(key="pipeline-report", markdown=summary.markdown(), description="The whole loop: figures, versions, timings")
    return summary
