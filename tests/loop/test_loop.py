"""The whole loop, in order, on one tiny store:

1. kill the pipeline in the middle of each stage and run it again: it completes, and nothing is duplicated
   in the lake, the registry, the bundle store or the release history (each run is a real `supportflow
   pipeline` process, killed with SIGKILL, against one Prefect API, so the stages' caches are the real ones);
2. a bundle that fails its smoke test is not promoted, and the first release cannot be rolled back;
3. drifting traffic through the served bot: the monitor detects it, retraining runs, the new model wins its
   gate and is promoted, `/classify` answers without errors throughout; then rollback restores release one.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest

from supportflow.tracking import connect
from tests.loop.conftest import EVALUATE_EXAMPLES, FIRST_INTENTS, HELD_BACK, first_tickets, loop_settings, tiny_rows

pytestmark = pytest.mark.slow
SUPPORTFLOW = str(Path(sys.executable).with_name("supportflow"))
# (the stage, the log line to wait for, seconds to wait after it): each lands inside a stage that is still running,
# which the test checks: the stage's closing line (flows/pipeline.py: "stage <name>: <seconds> s") was never written.
KILLS = [
    ("ingest", "stage ingest: started", 0.2),
    ("validate", "stage validate: started", 0.3),
    ("train", "stage train: started", 4.0),
    ("kb_index", "stage kb_index: started", 3.0),
    ("dialogue", "stage dialogue: started", 6.0),
    ("release", "stage release: started", 2.0),  # building the bundles
    ("release", "Task run 'build-bundles", 8.0),  # the smoke test's services are starting or answering
]


@dataclass
class Run:
    killed_in: str | None  # the stage the kill was meant to land in
    killed_after: str | None
    returncode: int
    output: str  # everything the process wrote, up to its death

    def finished(self, stage: str) -> bool:
        return re.search(rf"stage {stage}: \d+\.\d s", self.output) is not None


def run_pipeline(csv: Path, env: dict[str, str], kill: tuple[str, str, float] | None = None) -> Run:
    process = subprocess.Popen(
        [SUPPORTFLOW, "pipeline", str(csv)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if kill and kill[1] in line:
            time.sleep(kill[2])
            os.killpg(process.pid, signal.SIGKILL)
            break
    rest, _ = process.communicate(timeout=900)  # what it wrote while the kill was pending: did its stage finish first?
    return Run(kill[0] if kill else None, kill[1] if kill else None, process.returncode, "".join(lines) + rest)


def services_of(folder: Path) -> list[psutil.Process]:
    """Processes serving from this test's folder (a smoke test's bentos and Rasa)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if str(folder) in " ".join(process.info["cmdline"] or []) or process.environ().get("BENTOML_HOME", "").startswith(str(folder)):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@dataclass
class Chain:
    folder: Path
    runs: list[Run]
    orphans_after_kills: list[str]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, prefect_harness: None) -> Iterator[Chain]:
    from prefect.settings import PREFECT_API_URL

    folder = tmp_path_factory.mktemp("loop")
    with loop_settings(folder, tiny_base):  # stays active for every test of this module
        csv = folder / "tickets.csv"
        first_tickets().to_csv(csv, index=False)
        env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
        runs, orphans = [], []
        for kill in KILLS:
            runs.append(run_pipeline(csv, env, kill))
            time.sleep(3)  # SIGTERM from a dead parent reaches the smoke test's services
            orphans += [" ".join(p.cmdline()[:3]) for p in services_of(folder)]
        runs.append(run_pipeline(csv, env))
        yield Chain(folder, runs, orphans)


def test_a_pipeline_killed_in_every_stage_finishes_when_run_again(chain: Chain) -> None:
    killed, final = chain.runs[:-1], chain.runs[-1]
    for run in killed:
        assert run.returncode == -signal.SIGKILL, f"the run meant to die after {run.killed_after!r} was not killed"
        assert run.killed_after in run.output and "supportflow pipeline finished" not in run.output
        assert not run.finished(run.killed_in), f"the kill after {run.killed_after!r} landed after stage {run.killed_in} had finished"
    assert final.returncode == 0, final.output[-3000:]
    assert "supportflow pipeline finished" in final.output
    assert "production release" in final.output
    assert chain.orphans_after_kills == [], "a killed smoke test left services running"


def test_nothing_was_duplicated(chain: Chain) -> None:
    from supportflow.lake import open_lake
    from supportflow.release.promote import current_release
    from supportflow.settings import get_settings

    settings = get_settings()
    lake = open_lake(settings)
    tickets = [lake.read_parquet(path, columns=["ticket_id"]) for path in lake.files("tickets")]
    ids = [ticket for frame in tickets for ticket in frame["ticket_id"]]
    assert ids and len(ids) == len(set(ids))
    assert len(lake.files("snapshots", suffix="manifest.json")) == 1

    client = connect(settings)
    versions = client.search_model_versions(f"name = '{settings.registered_model_name}'")
    assert [str(v.version) for v in versions] == ["1"]
    aliases = client.get_model_version(settings.registered_model_name, "1").aliases  # search results leave aliases out
    assert {"champion", "challenger", "production"} <= set(aliases)

    for bento in ("supportflow-classifier", "supportflow-bot"):
        built = [p.name for p in (settings.bentoml_home / "bentos" / bento).iterdir() if p.name != "latest"]
        assert len(built) == 1, f"{bento}: {built}"
    history = lake.files("releases", "history", suffix=".json")
    production = current_release(lake)
    assert production is not None and len(history) == 1 and history[0].endswith(f"{production.release_id}.json")
    assert production.smoke.passed and production.bundles.classifier_version == "1"
    assert production.bundles.labels["classifier_version"] == "1" and production.bundles.kb_build

    # The release carries its bot-level evaluation: test messages replayed through the candidate's /chat, logged once.
    from supportflow.release.resolution import OUTCOMES

    resolution = production.resolution
    assert resolution is not None and resolution.errors == 0 and resolution.n == EVALUATE_EXAMPLES
    assert sum(getattr(resolution, outcome) for outcome in OUTCOMES) == resolution.n
    assert set(resolution.by_intent) <= set(FIRST_INTENTS) and resolution.source.startswith("the test split of snapshot snap-")
    assert (resolution.classifier_version, resolution.kb_build) == ("1", production.bundles.kb_build)
    assert f"  resolution: {EVALUATE_EXAMPLES} messages of the test split" in chain.runs[-1].output
    experiment = client.get_experiment_by_name(settings.resolution_experiment)
    runs = client.search_runs([experiment.experiment_id], f"tags.release_id = '{production.release_id}'")
    assert len(runs) == 1 and runs[0].data.metrics["n"] == EVALUATE_EXAMPLES


def test_a_bundle_that_fails_its_smoke_test_is_not_promoted(chain: Chain) -> None:
    from supportflow.lake import open_lake
    from supportflow.release.promote import ReleaseError, current_release, promote, rollback_release, smoke_test
    from supportflow.settings import get_settings
    from supportflow.validate.snapshot import latest_snapshot, read_split

    settings = get_settings()
    lake = open_lake(settings)
    production = current_release(lake)
    assert production is not None
    test = read_split(lake, latest_snapshot(lake).snapshot_id, "test").head(20)
    # The real bundles, served on spare ports, held to an accuracy no model reaches: the smoke test says no.
    report = smoke_test(settings, production.bundles, test, expected_accuracy=1.5, log_dir=chain.folder / "smoke-fail")
    assert not report.passed and "test examples right" in (report.failure or "") and report.resolution is None
    with pytest.raises(ReleaseError, match="failed its smoke test"):
        promote(settings, lake, production.bundles, report)
    assert current_release(lake) == production
    with pytest.raises(ReleaseError, match="first one"):
        rollback_release(settings, lake)


class ClassifyProbe(threading.Thread):
    """Asks the production classifier all along, as a customer-facing service would, and counts failures: ten times a
    second, often enough to land in any gap while it swaps models, and not so often that it starves the retraining."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.requests, self.errors = url, 0, []
        self.stopped = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stopped.wait(0.1):
                try:
                    response = client.post(f"{self.url}/classify", json={"texts": ["I lost my phone, what do I do?"]})
                    if response.status_code != 200 or not response.json()[0]["ranking"]:
                        self.errors.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as error:
                    self.errors.append(repr(error))
                self.requests += 1


def served_version(url: str) -> str:
    return httpx.post(f"{url}/model", json={}, timeout=30).json()["version"]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def drifting_messages() -> tuple[list[tuple[str, str]], pd.DataFrame]:
    """The replayed traffic (mostly the two held-back intents, phrased the way a chat customer types) and the
    desk's newer export, which holds the held-back intents too."""
    rows = tiny_rows()
    held = rows[rows["category"].isin(HELD_BACK)]
    replay = held.sample(n=60, random_state=7)
    known = first_tickets().sample(n=20, random_state=7)
    chatty = [(f"hi, {text.lower().rstrip('?.!')} pls", intent) for text, intent in zip(replay["text"], replay["category"], strict=True)]
    messages = chatty + list(zip(known["text"], known["category"], strict=True))
    return messages, held.drop(replay.index)


def test_drifting_traffic_is_detected_retrained_on_and_promoted_while_classify_keeps_answering(chain: Chain) -> None:
    from flows.drift_monitor import drift_monitor
    from flows.ingest import ingest
    from supportflow.bot.turns import read_turns
    from supportflow.keys import conversation_keys
    from supportflow.lake import open_lake
    from supportflow.processes import free_port
    from supportflow.release.promote import current_release, rollback_release
    from supportflow.release.stack import Ports, start_stack
    from supportflow.settings import get_settings

    settings = get_settings()
    lake = open_lake(settings)
    first = current_release(lake)
    assert first is not None
    client = connect(settings)
    name = settings.registered_model_name
    ports = Ports(bot=free_port(), classifier=free_port(), rasa=free_port(), actions=free_port())
    with start_stack(settings, settings.rasa_project_dir, None, chain.folder / "production", ports, bundles=first.bundles) as stack:
        probe = ClassifyProbe(stack.classifier_url)
        probe.start()
        try:
            messages, newer_export = drifting_messages()
            keys = conversation_keys(settings)  # the agent API shows each conversation by its stored id
            intent_of = {}
            for text, intent in messages:  # each a new conversation, named by the bot
                reply = httpx.post(f"{stack.bot_url}/chat", json={"message": text}, timeout=60)
                assert reply.status_code == 200, reply.text
                intent_of[keys.stored_id(reply.json()["conversation_id"])] = intent
            # Agents take the handoffs and confirm what each customer wanted: labels for the next training. The bot
            # listens on loopback with no agent registered, so the developer at the keyboard acts as `local`.
            waiting, offset = [], 0
            while offset is not None:
                page = httpx.get(
                    f"{stack.bot_url}/agent/handoffs", params={"status": "waiting", "limit": 100, "offset": offset}, timeout=30
                ).json()
                waiting, offset = waiting + page["handoffs"], page["next_offset"]
            assert len(waiting) >= 20, f"only {len(waiting)} handoffs: the unseen intents were not handed off"
            for handoff in waiting:
                act = f"{stack.bot_url}/agent/handoffs/{handoff['id']}"
                httpx.post(f"{act}/claim", json={}, timeout=30).raise_for_status()
                intent = intent_of[handoff["conversation_id"]]
                # A message the bot took for a request for a person holds no question yet: the agent names it.
                named = {} if handoff["question_id"] else {"message_id": handoff["transcript"][0]["id"]}
                httpx.post(f"{act}/resolve", json={"intent": intent, **named}, timeout=30).raise_for_status()
            # ...and the desk's newest export arrives, with the new intents in it.
            export = chain.folder / "newer-tickets.csv"
            newer_export.to_csv(export, index=False)
            ingest([str(export)], source="helpdesk")
            wait_for(lambda: len(read_turns(lake)) >= len(messages), "the bot's turns to reach the lake")

            report = drift_monitor(window_hours=1.0, retrain=True)

            assert report.drifted and report.n_turns >= len(messages)
            assert report.fallback_rate is not None and report.fallback_rate > settings.drift.max_fallback_rate
            assert any("fallback" in breach for breach in report.breaches)
            assert report.retraining.startswith("ran the pipeline")
            second = current_release(lake)
            assert second is not None and second.previous_release == first.release_id
            assert second.bundles.classifier_version == "2" and second.smoke.passed
            assert (
                second.resolution is not None and second.resolution.n == EVALUATE_EXAMPLES and second.resolution.classifier_version == "2"
            )
            for alias in ("champion", "production"):
                assert str(client.get_model_version_by_alias(name, alias).version) == "2"
            # The running classifier follows the promotion, and now knows the intents it had never seen.
            wait_for(lambda: served_version(stack.classifier_url) == "2", "the served classifier to follow @production")
            unseen = [text for text, _ in messages[:20]]
            answers = httpx.post(f"{stack.classifier_url}/classify", json={"texts": unseen}, timeout=30).json()
            assert sum(a["intent"] in HELD_BACK for a in answers) >= 15

            # Rollback restores release one: its bundles, and @production and @champion on v1, together.
            replaced, restored = rollback_release(settings, lake)
            assert replaced.release_id == second.release_id and restored.release_id == first.release_id
            assert current_release(lake).bundles == first.bundles
            for alias in ("champion", "production"):
                assert str(client.get_model_version_by_alias(name, alias).version) == "1"
            wait_for(lambda: served_version(stack.classifier_url) == "1", "the served classifier to follow the rollback")
        finally:
            probe.stopped.set()
            probe.join(timeout=30)
    assert probe.requests > 100 and probe.errors == [], probe.errors[:5]
