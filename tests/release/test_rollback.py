"""`supportflow rollback` on a real registry (SQLite) and lake in the test's folder, with releases recorded the way
the release flow records them (no bundles are built: promotion and rollback move pointers, and load the release's
dialogue model into the running Rasa). The Rasa is a stand-in that speaks the one route used, `PUT /model`; the
whole loop with real bundles, a real Rasa and a real retraining is tests/loop/test_loop.py."""

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
from mlflow import MlflowClient

from supportflow.lake import open_lake
from supportflow.release.bundle import Bundles
from supportflow.release.promote import SmokeReport, current_release, promote
from supportflow.release.stack import Ports, Stack, record_stack, stack_file
from supportflow.settings import Settings, get_settings
from supportflow.tracking import CHAMPION, PRODUCTION, connect

TOKEN = "internal-token-of-the-stack-left-running-0123456789"


def register(client: MlflowClient, settings: Settings, previous_champion: str | None = None) -> str:
    """A registered version, made champion as the gate makes one (no weights: rollback moves aliases only)."""
    experiment = client.get_experiment_by_name("train") or client.get_experiment(client.create_experiment("train"))
    run = client.create_run(experiment.experiment_id)
    name = settings.registered_model_name
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    version = str(client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version)
    if previous_champion is not None:
        client.set_model_version_tag(name, version, "previous_champion", previous_champion)
    client.set_registered_model_alias(name, CHAMPION, version)
    return version


def bundles_of(settings: Settings, version: str) -> Bundles:
    """Bundles for a classifier version, with the dialogue archive that a bot bundle carries in the bundle store."""
    dialogue = f"supportflow-dialogue:d{version}"
    archive = settings.bentoml_home / "models" / "supportflow-dialogue" / f"d{version}" / "model.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(f"rasa model {version}".encode())
    return Bundles(
        classifier=f"supportflow-classifier:v{version}-abc",
        bot=f"supportflow-bot:v{version}-abc",
        classifier_model=f"supportflow-intent-classifier:v{version}",
        dialogue_model=dialogue,
        classifier_version=version,
        serving_variant="fp32",
        kb_build="kb-1",
        labels={"classifier_version": version},
    )


def passed(version: str) -> SmokeReport:
    return SmokeReport(
        passed=True, classifier_version=version, examples=60, accuracy=0.9, expected_accuracy=0.9, chat_route="kb", failure=None, seconds=3
    )


class FakeRasa(BaseHTTPRequestHandler):
    """Rasa's `PUT /model?token=... {"model_file": ...}`, the call that makes a running Rasa load another model; a call
    without the stack's internal token is refused, as Rasa's --auth-token refuses it."""

    loaded: ClassVar[list[str]] = []
    broken: ClassVar[bool] = False  # a model it cannot load: Rasa answers 400 and keeps the one it has

    def do_PUT(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        url = urlsplit(self.path)
        if FakeRasa.broken:
            self.send_response(400)
        elif (url.path, parse_qs(url.query).get("token")) != ("/model", [TOKEN]):
            FakeRasa.loaded.append(f"refused {self.path}")
            self.send_response(401)
        else:
            FakeRasa.loaded.append(body["model_file"])
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def running_rasa() -> Iterator[int]:
    """A stack left serving in the background (`supportflow serve --background` records it), with its Rasa's port."""
    FakeRasa.loaded, FakeRasa.broken = [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRasa)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    record_stack(get_settings(), Stack(Ports(rasa=server.server_address[1]), internal_token=TOKEN))
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_rollback_restores_the_previous_release_and_the_running_rasa_follows_both_ways(
    running_rasa: int, capsys: pytest.CaptureFixture[str]
) -> None:
    from supportflow.cli import main

    settings = get_settings()
    client, lake, name = connect(settings), open_lake(settings), settings.registered_model_name
    one = promote(settings, lake, bundles_of(settings, register(client, settings)), passed("1"))
    two = promote(settings, lake, bundles_of(settings, register(client, settings, previous_champion="1")), passed("2"))
    archive = settings.bentoml_home / "models" / "supportflow-dialogue"
    assert FakeRasa.loaded == [str(archive / "d1" / "model.tar.gz"), str(archive / "d2" / "model.tar.gz")]  # each promotion

    assert main(["rollback"]) == 0
    assert capsys.readouterr().out == (
        f"production rolled back from release {two.release_id} to {one.release_id}:\n"
        f"  bundles {one.bundles.classifier}, {one.bundles.bot}\n"
        f"  @production and @champion on {name} v1\n"
    )
    assert FakeRasa.loaded[-1] == str(archive / "d1" / "model.tar.gz")  # the running Rasa follows the rollback
    restored = current_release(lake)
    assert restored is not None and restored.bundles == one.bundles and restored.note == f"restored by rollback from {two.release_id}"
    for alias in (CHAMPION, PRODUCTION):
        assert str(client.get_model_version_by_alias(name, alias).version) == "1"

    assert main(["rollback"]) == 2  # release one replaced nothing
    assert f"release {one.release_id} is the first one; there is no earlier release to roll back to" in capsys.readouterr().err
    assert current_release(lake) == restored and len(FakeRasa.loaded) == 3


def test_status_says_when_the_running_rasa_refused_the_releases_dialogue_model(running_rasa: int) -> None:
    """A promotion stands though the running Rasa would not load its model; `status` then says which model Rasa
    still serves, where it used to name the release's alone."""
    from supportflow.status import production_status

    settings = get_settings()
    client, lake = connect(settings), open_lake(settings)
    promote(settings, lake, bundles_of(settings, register(client, settings)), passed("1"))
    assert production_status(settings).dialogue.note is None  # loaded: the record follows it
    FakeRasa.broken = True
    promote(settings, lake, bundles_of(settings, register(client, settings, previous_champion="1")), passed("2"))
    dialogue = production_status(settings).dialogue
    first = settings.bentoml_home / "models" / "supportflow-dialogue" / "d1" / "model.tar.gz"
    assert dialogue.model == "supportflow-dialogue:d2" and dialogue.note.startswith(f"the running Rasa serves {first}, not this model")


def test_rollback_before_any_release_moves_the_champion_back_once(capsys: pytest.CaptureFixture[str]) -> None:
    from supportflow.cli import main

    settings = get_settings()
    assert main(["rollback"]) == 2  # an empty registry
    assert "intent-classifier has no champion in sqlite:///" in capsys.readouterr().err

    client, name = connect(settings), settings.registered_model_name
    register(client, settings)
    register(client, settings, previous_champion="1")
    assert main(["rollback"]) == 0
    assert capsys.readouterr().out == f"{name}: champion moved back from v2 to v1\n"
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    assert client.get_model_version(name, "2").tags["rolled_back_at"].startswith(str(datetime.now(UTC).year))
    assert main(["rollback"]) == 2
    assert f"{name} v1 is the first champion; there is no earlier version to roll back to" in capsys.readouterr().err
    assert not stack_file(settings).exists() and current_release(open_lake(settings)) is None
