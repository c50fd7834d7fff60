"""A second desk, through the README's commands alone: Tasklane (`examples/saas/`), another domain entirely.

`supportflow pipeline` with the workspace chosen and nothing else: its tickets are ingested and validated, a tiny
classifier learns its intents, its articles are indexed, its dialogue files are merged, validated and put through
their conversation tests, and its bundles are released. The production bot then speaks with Tasklane's words,
answers from Tasklane's articles and asks for the product before it answers a price question.
"""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pandas as pd
import pytest

from supportflow.dialogue.project import read_desk_dialogue
from tests.bot.conftest import surest_example
from tests.classifier.conftest import build_tiny_base
from tests.loop.conftest import EVALUATE_EXAMPLES, loop_settings

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DESK = ROOT / "examples" / "saas"
SUPPORTFLOW = str(Path(sys.executable).with_name("supportflow"))


@dataclass
class Desk:
    summary: dict
    bot_url: str
    classifier_url: str
    tickets: pd.DataFrame
    conversations: dict[str, tuple[str, str]] = field(default_factory=dict)  # a test's name for it -> the bot's id, token

    def chat(self, conversation: str, message: str) -> dict:
        """A message in the conversation a test calls `conversation`: its first starts it, and the bot names it."""
        body, headers = {"message": message}, {}
        if conversation in self.conversations:
            known, token = self.conversations[conversation]
            body, headers = {"conversation_id": known, "message": message}, {"X-Conversation-Token": token}
        response = httpx.post(f"{self.bot_url}/chat", json=body, headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        reply = response.json()
        if "conversation_token" in reply:
            self.conversations[conversation] = (reply["conversation_id"], reply["conversation_token"])
        return reply

    def recognised(self, intent: str, without: tuple[str, ...] = ()) -> str:
        """The training example of `intent` the served classifier is surest of (a tiny model is not sure of all), among
        those that hold none of the words in `without`."""
        texts = [t for t in self.tickets.loc[self.tickets["intent"] == intent, "text"] if not any(w in t.lower() for w in without)]
        return surest_example(self.classifier_url, texts, intent)


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Iterator[Desk]:
    from prefect.settings import PREFECT_API_URL

    from supportflow.lake import open_lake
    from supportflow.processes import free_port
    from supportflow.release.promote import current_release
    from supportflow.release.stack import Ports, start_stack
    from supportflow.settings import get_settings

    folder = tmp_path_factory.mktemp("second-desk")
    tickets = pd.read_csv(DESK / "data" / "tickets.csv")
    base = build_tiny_base(folder / "base", tickets["text"].tolist())
    with loop_settings(folder, base, DESK), pytest.MonkeyPatch.context() as patch:
        # A tiny model is unsure of everything: a threshold for 90% precision would hand off the examples these tests
        # send (they are about the dialogue, not the classifier), and a rounding on another machine decides which.
        patch.setenv("SUPPORTFLOW_TARGET_PRECISION", "0.5")
        patch.setenv("SUPPORTFLOW_MAX_WRONG_ANSWERS", "1")
        patch.setenv("SUPPORTFLOW_PRECISION_CONFIDENCE", "0")
        get_settings.cache_clear()
        env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
        run = subprocess.run([SUPPORTFLOW, "pipeline", "--json"], capture_output=True, text=True, env=env, timeout=1200)
        assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
        summary = json.loads(run.stdout[run.stdout.index("{\n") if run.stdout.startswith("{") else run.stdout.rindex("\n{\n") :])
        settings = get_settings()
        release = current_release(open_lake(settings))
        assert release is not None
        ports = Ports(bot=free_port(), classifier=free_port(), rasa=free_port(), actions=free_port())
        elsewhere = settings.model_copy(update={"workspace": ROOT / "examples" / "banking77"})  # the bundle carries its desk
        with start_stack(elsewhere, settings.rasa_project_dir, None, folder / "logs", ports, bundles=release.bundles) as stack:
            yield Desk(summary, stack.bot_url, stack.classifier_url, tickets)


def test_the_pipeline_ran_every_stage_on_the_desks_own_data(desk: Desk) -> None:
    summary = desk.summary
    assert sum(report["written"] for report in summary["ingest"]) == 853 + 216  # both of the workspace's ticket sources
    assert summary["snapshot"]["intents"] == 18 and summary["snapshot"]["intent_catalogue"] == "tasklane"
    assert summary["knowledge_base"]["documents"] == 18 and summary["knowledge_base"]["unanswered_intents"] == []
    assert summary["dialogue"]["conversations"]["stories"] == 7 and summary["dialogue"]["conversations"]["failed"] == []
    assert summary["release"]["smoke"]["passed"]
    resolution = summary["release"]["smoke"]["resolution"]  # the candidate bot, measured as the desk would
    assert resolution["workspace"] == "tasklane" and resolution["n"] == EVALUATE_EXAMPLES and resolution["errors"] == 0
    assert sum(resolution[outcome] for outcome in ("answered_right", "answered_wrong", "clarified", "handed_off")) == resolution["n"]


def test_the_dialogues_validation_and_conversation_test_reports_are_in_mlflow_beside_its_model(desk: Desk) -> None:
    """Issue 11: `rasa data validate` and `rasa test` run on the desk's files, and their reports go to MLflow next to
    the dialogue model."""
    from mlflow import MlflowClient

    from supportflow.settings import get_settings

    run_id = desk.summary["dialogue"]["run_id"]
    client = MlflowClient(get_settings().mlflow_tracking_uri)
    metrics = client.get_run(run_id).data.metrics
    assert (metrics["conversation_stories"], metrics["conversation_stories_failed"]) == (7, 0)
    logged = {artifact.path for artifact in client.list_artifacts(run_id, "rasa")}
    assert {"rasa/supportflow.tar.gz", "rasa/validate.txt", "rasa/tests"} <= logged, logged
    assert client.list_artifacts(run_id, "rasa/tests"), "Rasa's conversation test report was not logged"


def test_the_bot_greets_and_answers_in_the_desks_own_words_wherever_its_bundle_is_served(desk: Desk) -> None:
    from supportflow.workspace import load_workspace

    texts = load_workspace(DESK).config.texts
    assert desk.chat("second-greet", "hello")["replies"] == [texts.greeting]
    answered = desk.chat("second-password", desk.recognised("password_reset"))
    assert (answered["route"], answered["intent"]) == ("kb", "password_reset"), answered
    assert "help.tasklane.example/articles/password-reset" in "\n".join(answered["replies"])


def test_a_price_question_gets_the_product_asked_for_then_the_price(desk: Desk) -> None:
    products = read_desk_dialogue(DESK / "domain").lookup_values()["product_name"]
    question = desk.recognised(
        "pricing_inquiry", without=tuple(product.lower() for product in products)
    )  # a product named is not asked for
    asked = desk.chat("second-price", question)
    assert asked["route"] == "dialogue" and "Which product is it about" in asked["replies"][0], asked
    answered = desk.chat("second-price", "Automations")
    assert (answered["route"], answered["intent"]) == ("kb", "pricing_inquiry"), answered
    assert "Tasklane Automations" in "\n".join(answered["replies"])
