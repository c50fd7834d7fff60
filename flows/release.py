"""The `release` flow: bundle the champion with its dialogue model, smoke-test the bundle on spare ports,
promote it. A failed smoke test raises, and production keeps what it was serving."""

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from pydantic import BaseModel

from supportflow.digest import text_digest
from supportflow.lake import open_lake
from supportflow.release.bundle import Bundles, build_bundles
from supportflow.release.promote import Release, ReleaseError, SmokeReport, promote, smoke_test
from supportflow.settings import Settings, get_settings
from supportflow.validate.snapshot import latest_snapshot, read_split


class ReleaseSummary(BaseModel):
    bundles: Bundles
    smoke: SmokeReport
    release: Release


@task(name="build-bundles", cache_policy=NO_CACHE)
def bundle(settings: Settings, classifier_version: str, dialogue_model: Path, kb_build: str | None) -> Bundles:
    return build_bundles(settings, classifier_version, dialogue_model, kb_build)


def _smoke_key(context: TaskRunContext, parameters: dict) -> str:
    """A passed smoke test of the same bundles, against the same stores, need not run again."""
    settings, bundles = parameters["settings"], parameters["bundles"]
    return text_digest("smoke", bundles.classifier, bundles.bot, settings.mlflow_tracking_uri, settings.lake_url, settings.bentoml_home)


@task(name="smoke-test", cache_key_fn=_smoke_key, persist_result=True, retries=1, retry_delay_seconds=5)
def smoke(settings: Settings, bundles: Bundles, expected_accuracy: float) -> SmokeReport:
    lake = open_lake(settings)
    test = read_split(lake, latest_snapshot(lake).snapshot_id, "test")
    examples = test.sample(n=min(settings.smoke_examples, len(test)), random_state=settings.snapshot_seed)
    report = smoke_test(settings, bundles, examples, expected_accuracy, settings.run_dir / "smoke-logs")
    if not report.passed:  # raising keeps a failure out of the cache, and stops the flow before promotion
        raise ReleaseError(f"bundle {bundles.bot} failed its smoke test: {report.failure}; production is unchanged")
    return report


@task(name="promote", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def promote_release(settings: Settings, bundles: Bundles, report: SmokeReport) -> Release:
    return promote(settings, open_lake(settings), bundles, report)


@flow(name="release")
def release(classifier_version: str, dialogue_model: str, kb_build: str | None, expected_accuracy: float) -> ReleaseSummary:
    settings = get_settings()
    bundles = bundle(settings, classifier_version, Path(dialogue_model), kb_build)
    report = smoke(settings, bundles, expected_accuracy)
    promoted = promote_release(settings, bundles, report)
    get_run_logger().info("release %s is production: %s, %s", promoted.release_id, bundles.classifier, bundles.bot)
    create_markdown_artifact(
        key="release",
        markdown=(
            f"**Release** `{promoted.release_id}` (replaced `{promoted.previous_release}`)\n\n"
            f"bundles `{bundles.classifier}`, `{bundles.bot}`; classifier v{classifier_version} ({bundles.serving_variant}),"
            f" dialogue `{bundles.dialogue_model}`, knowledge base `{kb_build}`\n\n"
            f"smoke test: {report.accuracy:.1%} of {report.examples} test examples right (registered {report.expected_accuracy:.1%}),"
            f" /chat routed `{report.chat_route}`, {report.seconds:.0f} s"
        ),
        description="Bundle, smoke test and promotion",
    )
    return ReleaseSummary(bundles=bundles, smoke=report, release=promoted)
