"""The `pipeline` flow: the whole loop, end to end, on whatever the configuration points at.

ingest -> validate -> train (evaluate, register, gate) -> kb_index -> dialogue -> release (bundle, smoke
test on spare ports, promote) -> report. Every stage can be re-run: ingest and validate are idempotent by
content, training resumes from the registry (a finished training of the same snapshot is not repeated),
the knowledge base and dialogue stages are cached on their inputs, bundles are content-addressed and a
passed smoke test is cached on the bundles. So a run killed anywhere is finished by running it again.
"""

import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext
from pydantic import BaseModel

from flows.dialogue import dialogue
from flows.ingest import ingest
from flows.kb_index import kb_index
from flows.release import ReleaseSummary, release
from flows.train import TrainingSummary, train
from flows.validate import validate
from supportflow.dialogue.build import DialogueBuild
from supportflow.digest import files_digest, text_digest
from supportflow.ingest.load import IngestReport
from supportflow.kb.build import BuildReport, keyword_index
from supportflow.release.production import registry_client
from supportflow.settings import PROJECT_ROOT, Settings, get_settings
from supportflow.validate.snapshot import SnapshotManifest

BANKING77 = PROJECT_ROOT / "data" / "banking77"
CACHE_FOR = timedelta(days=30)
T = TypeVar("T")


class PipelineSummary(BaseModel):
    ingest: list[IngestReport]
    snapshot: SnapshotManifest
    training: TrainingSummary
    knowledge_base: BuildReport
    dialogue: DialogueBuild
    release: ReleaseSummary
    stages: dict[str, float]  # seconds per stage, this run (a cached stage takes about nothing)
    total_seconds: float


def _stores(settings: Settings) -> str:
    return text_digest(settings.lake_url, settings.mlflow_tracking_uri, settings.kb_dir.resolve(), settings.rasa_project_dir)


def _kb_key(context: TaskRunContext, parameters: dict) -> str:
    settings: Settings = parameters["settings"]
    kb_settings = settings.model_dump_json(include={name for name in Settings.model_fields if name.startswith(("kb_", "search_", "es_"))})
    return text_digest("kb", files_digest(settings.kb_sources), kb_settings, parameters["snapshot_id"], _stores(settings))


def _dialogue_key(context: TaskRunContext, parameters: dict) -> str:
    settings: Settings = parameters["settings"]
    code = files_digest([PROJECT_ROOT / "supportflow" / "dialogue", settings.contracts_dir])
    return text_digest("dialogue", parameters["champion_version"], parameters["snapshot_id"], code, _stores(settings))


@task(name="kb-index-stage", cache_key_fn=_kb_key, cache_expiration=CACHE_FOR, persist_result=True)
def kb_stage(settings: Settings, snapshot_id: str) -> BuildReport:
    return kb_index()


@task(name="dialogue-stage", cache_key_fn=_dialogue_key, cache_expiration=CACHE_FOR, persist_result=True)
def dialogue_stage(settings: Settings, champion_version: str, snapshot_id: str) -> DialogueBuild:
    return dialogue()


def registered_accuracy(settings: Settings, version: str) -> float:
    client = registry_client(settings)
    run_id = client.get_model_version(settings.registered_model_name, version).run_id
    return client.get_run(run_id).data.metrics["test_accuracy"]


@flow(name="pipeline")
def pipeline(paths: list[str] | None = None, source: str = "banking77", profile: str | None = None) -> PipelineSummary:
    """`paths=None` ingests BANKING77; `paths=[]` ingests nothing new (a retraining on the lake's tickets and
    the agents' labels); `profile` picks the training profile (default: the settings')."""
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

    files = [str(BANKING77 / "train.csv"), str(BANKING77 / "test.csv")] if paths is None else paths
    reports = timed("ingest", lambda: ingest(files, source=source) if files else [])
    snapshot = timed("validate", validate)
    training = timed("train", lambda: train(profile=profile))
    served = keyword_index(settings).serving() is not None
    knowledge = timed("kb_index", lambda: kb_stage.with_options(refresh_cache=not served)(settings, snapshot.snapshot_id))
    champion = training.champion_version
    built = timed("dialogue", lambda: dialogue_stage(settings, champion, snapshot.snapshot_id))
    if not built.model.exists():  # the cached build's archive was removed since: build it again
        built = timed("dialogue", lambda: dialogue_stage.with_options(refresh_cache=True)(settings, champion, snapshot.snapshot_id))
    accuracy = registered_accuracy(settings, training.champion_version)
    released = timed("release", lambda: release(training.champion_version, str(built.model), knowledge.build_id, accuracy))
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
    rows = "\n".join(f"| {name} | {seconds:.1f} |" for name, seconds in stages.items())
    create_markdown_artifact(
        key="pipeline-report",
        markdown=(
            f"**Pipeline** on snapshot `{snapshot.snapshot_id}`: intent-classifier v{training.version} ({training.gate_reason});"
            f" production release `{released.release.release_id}` serves v{training.champion_version}\n\n"
            f"| stage | seconds |\n|---|---|\n{rows}\n| total | {summary.total_seconds:.1f} |"
        ),
        description="The whole loop: figures, versions, timings",
    )
    return summary
