"""Releases: a bundle reaches production only after it served real requests on spare ports.

The lake keeps `releases/production.json` (what serves) and `releases/history/<release_id>.json` (every
release, each naming the one it replaced). Promotion sets the registry's `production` alias and then the
pointer; both are idempotent, so a run killed in between finishes the job when re-run. While the smoke test
serves the candidate, the test split is replayed through its `/chat` (supportflow/release/resolution.py), and
the figures are kept with the release. A failed smoke test, an evaluation with errors included, promotes
nothing: the current release keeps serving. Rollback restores the previous release's
bundle and moves `production` and `champion` back to its classifier version, together.
"""

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
from pydantic import BaseModel

from supportflow.digest import text_digest
from supportflow.errors import SupportflowError
from supportflow.lake import Lake
from supportflow.progress import Step
from supportflow.release.bundle import Bundles, dialogue_archive
from supportflow.release.resolution import LabelledExamples, ResolutionReport, evaluate_bot, log_resolution, snapshot_test_split
from supportflow.settings import Settings
from supportflow.tracking import CHAMPION, PRODUCTION, connect

AREA = "releases"
log = logging.getLogger("supportflow.release.promote")


class ReleaseError(SupportflowError):
    """A release cannot be promoted or rolled back; the current one keeps serving."""


class SmokeReport(BaseModel):
    passed: bool
    classifier_version: str
    examples: int
    accuracy: float
    expected_accuracy: float
    chat_route: str | None
    failure: str | None
    seconds: float
    resolution: ResolutionReport | None = None  # the test split replayed through the candidate's /chat; None: not run


class Release(BaseModel):
    release_id: str
    bundles: Bundles
    smoke: SmokeReport
    promoted_at: datetime
    previous_release: str | None = None
    note: str = "promoted"

    @property
    def resolution(self) -> ResolutionReport | None:
        """How often the released bot resolved the test split, measured by its smoke test."""
        return self.smoke.resolution


class ReleaseSummary(BaseModel):
    bundles: Bundles
    smoke: SmokeReport
    release: Release
    resolution_run_id: str | None = None  # the MLflow run that holds the release's resolution figures

    def lines(self) -> list[str]:
        bundles, smoke, release = self.bundles, self.smoke, self.release
        replaced = f", replacing {release.previous_release}" if release.previous_release else ""
        lines = [
            f"bundles {bundles.classifier} and {bundles.bot}",
            f"  labels: {bundles.labels}",
            f"  smoke test on spare ports: {smoke.accuracy:.1%} of {smoke.examples} test examples right"
            f" (registered {smoke.expected_accuracy:.1%}), /chat routed {smoke.chat_route}, {smoke.seconds:.0f} s",
        ]
        if release.resolution is not None:
            first, *rest = release.resolution.lines()
            lines += [f"  resolution: {first}", *(f"  {line}" for line in rest)]
            if self.resolution_run_id:
                lines.append(f"    in MLflow: run {self.resolution_run_id}")
        lines.append(f"production release {release.release_id}{replaced}: @production is v{bundles.classifier_version}")
        return lines

    def markdown(self) -> str:
        bundles, smoke, release = self.bundles, self.smoke, self.release
        resolution = f"\n\n{release.resolution.markdown()}" if release.resolution is not None else ""
        return (
            f"**Release** `{release.release_id}` (replaced `{release.previous_release}`)\n\n"
            f"bundles `{bundles.classifier}`, `{bundles.bot}`; classifier v{bundles.classifier_version} ({bundles.serving_variant}),"
            f" dialogue `{bundles.dialogue_model}`, knowledge base `{bundles.kb_build}`\n\n"
            f"smoke test: {smoke.accuracy:.1%} of {smoke.examples} test examples right (registered {smoke.expected_accuracy:.1%}),"
            f" /chat routed `{smoke.chat_route}`, {smoke.seconds:.0f} s{resolution}"
        )


def _check_classifier(url: str, bundles: Bundles, examples: pd.DataFrame) -> float:
    described = httpx.post(f"{url}/model", json={}, timeout=30).raise_for_status().json()
    if described["version"] != bundles.classifier_version:
        raise ReleaseError(f"the bundle serves v{described['version']}, not v{bundles.classifier_version}")
    results = httpx.post(f"{url}/classify", json={"texts": examples["text"].tolist()}, timeout=60).raise_for_status().json()
    fields = {"intent", "confidence", "ranking", "out_of_scope", "ood_score", "truncated"}  # the classify contract, docs/architecture.md
    if len(results) != len(examples) or not all(fields <= set(r) for r in results):
        raise ReleaseError(f"/classify broke its contract: one {{{', '.join(sorted(fields))}}} per text expected")
    return sum(r["intent"] == intent for r, intent in zip(results, examples["intent"], strict=True)) / len(examples)


def _check_bot(url: str, question: str, bundles: Bundles) -> str:
    status = httpx.get(f"{url}/status", timeout=30).raise_for_status().json()
    if bundles.kb_build is not None and status["knowledge_base"] != bundles.kb_build:
        raise ReleaseError(f"the bot serves knowledge base {status['knowledge_base']}, not build {bundles.kb_build}")
    refused = httpx.post(f"{url}/chat", json={"message": ""}, timeout=30)
    if refused.status_code != 400:
        raise ReleaseError(f"an empty message got status {refused.status_code}, not a 400 refusal")
    reply = httpx.post(f"{url}/chat", json={"message": question}, timeout=60)
    body = reply.json()
    if reply.status_code != 200 or not body.get("replies"):
        raise ReleaseError(f"/chat answered {reply.status_code} {body}: the dialogue path is broken")
    return str(body["route"])


def smoke_test(
    settings: Settings,
    bundles: Bundles,
    examples: pd.DataFrame,
    expected_accuracy: float,
    log_dir: Path,
    replayed: LabelledExamples | None = None,
) -> SmokeReport:
    """Serve the new bundles (with Rasa and the action server) on spare ports and talk to them; with `replayed`,
    then replay those labelled messages through the candidate's `/chat` while it is up (the bot-level evaluation).

    They run against a scratch lake and handoff queue, so smoke turns never reach the drift monitor. An evaluation
    with errors fails the smoke test: a bot that drops customers' messages is not released.
    """
    from supportflow.release.stack import scratch_stack

    started = time.perf_counter()
    accuracy, route, failure, resolution = 0.0, None, None, None
    step = Step("smoke test", total=3 if replayed is None else 4)
    try:
        with scratch_stack(settings, bundles, log_dir) as stack:
            step.advance(detail="served on spare ports")
            accuracy = _check_classifier(stack.classifier_url, bundles, examples)
            step.advance(detail=f"{accuracy:.1%} of {len(examples)} classified right")
            if accuracy < expected_accuracy - settings.smoke_max_accuracy_drop:
                raise ReleaseError(
                    f"the bundle classified {accuracy:.1%} of {len(examples)} test examples right; its registered accuracy is"
                    f" {expected_accuracy:.1%}"
                )
            route = _check_bot(stack.bot_url, str(examples["text"].iloc[0]), bundles)
            step.advance(detail=f"/chat routed {route}")
            if replayed is not None:
                resolution = evaluate_bot(settings, stack.bot_url, replayed, bundles.classifier_version).report
                step.advance(detail=f"{resolution.answered_right_rate:.1%} of {resolution.n} answered right")
                if resolution.errors:
                    raise ReleaseError(
                        f"{resolution.errors} of {resolution.n + resolution.errors} evaluation messages got no usable reply"
                        f" from /chat, e.g. {resolution.error_details[0]}"
                    )
    except (SupportflowError, httpx.HTTPError, KeyError, ValueError) as error:
        failure = f"{type(error).__name__}: {error}"
    finally:
        step.close()
    return SmokeReport(
        passed=failure is None,
        classifier_version=bundles.classifier_version,
        examples=len(examples),
        accuracy=accuracy,
        expected_accuracy=expected_accuracy,
        chat_route=route,
        failure=failure,
        seconds=time.perf_counter() - started,
        resolution=resolution,
    )


def smoke_key(settings: Settings, bundles: Bundles) -> str:
    """A passed smoke test of the same bundles, against the same stores, replaying as many messages, need not run again."""
    return text_digest(
        "smoke",
        bundles.classifier,
        bundles.bot,
        settings.mlflow_tracking_uri,
        settings.lake_url,
        settings.bentoml_home,
        settings.evaluate_examples,
    )


def smoke_test_release(settings: Settings, bundles: Bundles, expected_accuracy: float) -> SmokeReport:
    """The smoke test on a seeded sample of the latest snapshot's test split, and the bot-level evaluation on the
    split (or `evaluate_examples` of it); a failure raises, so it is never cached as a pass and the flow stops
    before promotion."""
    test = snapshot_test_split(settings)
    examples = test.frame.sample(n=min(settings.smoke_examples, len(test.frame)), random_state=settings.snapshot_seed)
    replayed = test.sample(settings.evaluate_examples, settings.snapshot_seed)
    report = smoke_test(settings, bundles, examples, expected_accuracy, settings.run_dir / "smoke-logs", replayed)
    if not report.passed:
        raise ReleaseError(f"bundle {bundles.bot} failed its smoke test: {report.failure}; production is unchanged")
    return report


def log_release_resolution(settings: Settings, release: Release) -> str | None:
    """The release's resolution figures in MLflow under its release id, once it has one; None when its smoke test
    replayed nothing. Logged once per release, however often the flow is re-run."""
    if release.resolution is None:
        return None
    return log_resolution(settings, release.resolution, release.release_id, evaluated_by="release")


def current_release(lake: Lake) -> Release | None:
    if not lake.exists(AREA, "production.json"):
        return None
    return Release.model_validate(lake.read_json(AREA, "production.json"))


def release_history(lake: Lake, release_id: str) -> Release:
    if not lake.exists(AREA, "history", f"{release_id}.json"):
        raise ReleaseError(f"release {release_id} is not in {lake.uri(AREA, 'history')}")
    return Release.model_validate(lake.read_json(AREA, "history", f"{release_id}.json"))


def _point_production(settings: Settings, lake: Lake, release: Release) -> None:
    client = connect(settings)
    client.set_registered_model_alias(settings.registered_model_name, PRODUCTION, release.bundles.classifier_version)
    lake.write_json(release.model_dump(mode="json"), AREA, "production.json")


def promote(settings: Settings, lake: Lake, bundles: Bundles, smoke: SmokeReport) -> Release:
    """Make these bundles production, if their smoke test passed; re-running it is harmless."""
    if not smoke.passed:
        raise ReleaseError(f"bundle {bundles.bot} failed its smoke test ({smoke.failure}); production is unchanged")
    current = current_release(lake)
    release_id = bundles.bot.split(":")[1]
    if current is not None and current.release_id == release_id:
        _point_production(settings, lake, current)  # finishes a promotion that was cut short
        apply_to_running_stack(settings, current)
        return current
    release = Release(
        release_id=release_id,
        bundles=bundles,
        smoke=smoke,
        promoted_at=datetime.now(UTC),
        previous_release=current.release_id if current else None,
    )
    lake.write_json(release.model_dump(mode="json"), AREA, "history", f"{release_id}.json")
    _point_production(settings, lake, release)
    apply_to_running_stack(settings, release)
    return release


def rollback_release(settings: Settings, lake: Lake) -> tuple[Release, Release]:
    """Back to the release the current one replaced: its bundle, and `production` and `champion` on its model."""
    current = current_release(lake)
    if current is None:
        raise ReleaseError(f"no release in {lake.uri(AREA)}: nothing to roll back")
    if current.previous_release is None:
        raise ReleaseError(f"release {current.release_id} is the first one; there is no earlier release to roll back to")
    previous = release_history(lake, current.previous_release)
    client = connect(settings)
    client.set_registered_model_alias(settings.registered_model_name, CHAMPION, previous.bundles.classifier_version)
    restored = previous.model_copy(update={"note": f"restored by rollback from {current.release_id}", "promoted_at": datetime.now(UTC)})
    _point_production(settings, lake, restored)
    apply_to_running_stack(settings, restored)
    return current, restored


def apply_to_running_stack(settings: Settings, release: Release) -> bool:
    """On one machine: load the release's dialogue model into the running Rasa (the classifier and bot
    follow the `production` alias by themselves). Returns whether a running stack was updated; a Rasa that
    cannot load it keeps its model and says so in the log (the release itself stands)."""
    from supportflow.release.stack import loaded_dialogue_model, recorded_token, stack_file

    if not stack_file(settings).exists():
        return False
    port = json.loads(stack_file(settings).read_text())["ports"]["rasa"]
    archive = dialogue_archive(settings, release.bundles.dialogue_model)
    token = {"token": recorded_token(settings) or ""}  # Rasa's API takes its token as a query parameter
    try:
        httpx.put(f"http://127.0.0.1:{port}/model", params=token, json={"model_file": str(archive)}, timeout=120).raise_for_status()
    except httpx.HTTPError as error:  # its text holds the URL, and the URL the token: the log gets the status alone
        why = f"HTTP {error.response.status_code}" if isinstance(error, httpx.HTTPStatusError) else type(error).__name__
        log.warning("the running Rasa on port %s did not load %s (%s): restart it with `supportflow serve`", port, archive, why)
        return False
    loaded_dialogue_model(settings, archive)
    return True
