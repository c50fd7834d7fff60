"""The `release` flow: bundle the champion with its dialogue model, smoke-test the bundle on spare ports (and
replay the test split through its /chat while it serves), promote it, log its resolution figures under the
release id. A failed smoke test raises, and production keeps what it was serving."""

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from flows.results import on_the_lake
from supportflow.lake import open_lake
from supportflow.release.bundle import Bundles, build_bundles
from supportflow.release.promote import (
    Release,
    ReleaseSummary,
    SmokeReport,
    log_release_resolution,
    promote,
    smoke_key,
    smoke_test_release,
)
from supportflow.settings import Settings, get_settings


@task(name="build-bundles", cache_policy=NO_CACHE)
def bundle(settings: Settings, classifier_version: str, dialogue_model: Path, kb_build: str | None) -> Bundles:
    return build_bundles(settings, classifier_version, dialogue_model, kb_build)


def _smoke_key(context: TaskRunContext, parameters: dict) -> str:
    return smoke_key(parameters["settings"], parameters["bundles"])


@task(name="smoke-test", cache_key_fn=_smoke_key, persist_result=True, retries=1, retry_delay_seconds=5)
def smoke(settings: Settings, bundles: Bundles, expected_accuracy: float) -> SmokeReport:
    return smoke_test_release(settings, bundles, expected_accuracy)


@task(name="promote", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def promote_release(settings: Settings, bundles: Bundles, report: SmokeReport) -> Release:
    return promote(settings, open_lake(settings), bundles, report)


@task(name="log-resolution", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def log_resolution(settings: Settings, release: Release) -> str | None:
    return log_release_resolution(settings, release)


@flow(name="release")
def release(classifier_version: str, dialogue_model: str, kb_build: str | None, expected_accuracy: float) -> ReleaseSummary:
    settings = get_settings()
    bundles = bundle(settings, classifier_version, Path(dialogue_model), kb_build)
    report = on_the_lake(smoke, settings)(settings, bundles, expected_accuracy)  # cached on the lake: any pod finds it
    promoted = promote_release(settings, bundles, report)
    run_id = log_resolution(settings, promoted)
    summary = ReleaseSummary(bundles=bundles, smoke=report, release=promoted, resolution_run_id=run_id)
    get_run_logger().info("release %s is production: %s, %s", promoted.release_id, bundles.classifier, bundles.bot)
    create_markdown_artifact(key="release", markdown=summary.markdown(), description="Bundle, smoke test and promotion")
    return summary
