"""The whole loop, in order, on one tiny store:

1. kill the pipeline in the middle of each stage and run it again: it completes, and nothing is duplicated
   in the lake, the registry, the bundle store or the release history (each run is a real `supportflow
   pipeline` process, killed with SIGKILL, against one Prefect API, so the stages' caches are the real ones);
2. a bundle that fails its smoke test is not promoted, and the first release cannot be rolled back;
3. drifting traffic through the served bot: the monitor detects it, retraining runs, the new model wins its
   gate and is promoted, `/classify` answers without errors throughout; then rollback restores release one.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from tests.loop.conftest import first_tickets, loop_settings

SUPPORTFLOW = str(Path(sys.executable).with_name("supportflow"))
# (the log line to wait for, seconds to wait after it): each lands inside a stage that is still running.
KILLS = [
    ("stage ingest: started", 0.2),
    ("stage validate: started", 0.3),
    ("stage train: started", 4.0),
    ("stage kb_index: started", 3.0),
    ("stage dialogue: started", 6.0),
    ("stage release: started", 2.0),  # building the bundles
    ("Task run 'build-bundles", 8.0),  # the smoke test's services are starting or answering
]


@dataclass
class Run:
    killed_after: str | None
    returncode: int
    output: str


def run_pipeline(csv: Path, env: dict[str, str], kill_after: str | None = None, delay: float = 0.0) -> Run:
    process = subprocess.Popen(
        [SUPPORTFLOW, "pipeline", str(csv)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if kill_after and kill_after in line:
            time.sleep(delay)
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=900)
    return Run(kill_after, process.returncode, "".join(lines))


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
        for marker, delay in KILLS:
            runs.append(run_pipeline(csv, env, marker, delay))
            time.sleep(3)  # SIGTERM from a dead parent reaches the smoke test's services
            orphans += [" ".join(p.cmdline()[:3]) for p in services_of(folder)]
        runs.append(run_pipeline(csv, env))
        yield Chain(folder, runs, orphans)


def test_a_pipeline_killed_in_every_stage_finishes_when_run_again(chain: Chain) -> None:
    killed, final = chain.runs[:-1], chain.runs[-1]
    for run in killed:
        assert run.returncode == -signal.SIGKILL, f"the run meant to die after {run.killed_after!r} was not killed"
        assert "supportflow pipeline finished" not in run.output
    assert final.returncode == 0, final.output[-3000:]
    assert "supportflow pipeline finished" in final.output
    assert "production release" in final.output
    assert chain.orphans_after_kills == [], "a killed smoke test left services running"


def test_nothing_was_duplicated(chain: Chain) -> None:
    from supportflow.lake import open_lake
    from supportflow.release import current_release
    from supportflow.settings import get_settings

    settings = get_settings()
    lake = open_lake(settings)
    tickets = [lake.read_parquet(path, columns=["ticket_id"]) for path in lake.files("tickets")]
    ids = [ticket for frame in tickets for ticket in frame["ticket_id"]]
    assert ids and len(ids) == len(set(ids))
    assert len(lake.files("snapshots", suffix="manifest.json")) == 1

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
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


def test_a_bundle_that_fails_its_smoke_test_is_not_promoted(chain: Chain) -> None:
    from supportflow.lake import open_lake
    from supportflow.release import ReleaseError, current_release, promote, rollback_release, smoke_test
    from supportflow.settings import get_settings
    from supportflow.snapshot import latest_snapshot, read_split

    settings = get_settings()
    lake = open_lake(settings)
    production = current_release(lake)
    assert production is not None
    test = read_split(lake, latest_snapshot(lake).snapshot_id, "test").head(20)
    # The real bundles, served on spare ports, held to an accuracy no model reaches: the smoke test says no.
    report = smoke_test(settings, production.bundles, test, expected_accuracy=1.5, log_dir=chain.folder / "smoke-fail")
    assert not report.passed and "test examples right" in (report.failure or "")
    with pytest.raises(ReleaseError, match="failed its smoke test"):
        promote(settings, lake, production.bundles, report)
    assert current_release(lake) == production
    with pytest.raises(ReleaseError, match="first one"):
        rollback_release(settings, lake)
