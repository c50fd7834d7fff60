import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.classifier.conftest import classifier_settings, tiny_base, tiny_rows  # noqa: F401 - the tiny DistilBERT fixture, shared

ROOT = Path(__file__).resolve().parents[2]
TWILIO_TOKEN = "0123456789abcdef0123456789abcdef"
SECRET_KEY = "stack-test-key-5a1f9c3e7b2d4f6a8c0e1b3d5f7a9c2e"


@pytest.fixture(autouse=True)
def _forget_served_bot() -> Iterator[None]:
    """Tests that serve the bot in-process point the service's routes at their own instance; the next test in the
    same worker (one whose uvicorn bot has its own stores) must not find it still there."""
    yield
    service = sys.modules.get("bentos.bot.service")
    if service is not None:
        service.web.dependency_overrides.clear()


@dataclass(frozen=True)
class PreparedDesk:
    """Everything a served stack needs, trained in a tmp folder: the settings naming it, the tickets the tiny
    classifier learnt, and the Rasa project and model."""

    settings: object
    rows: pd.DataFrame
    rasa_project: Path
    rasa_model: Path


@contextmanager
def prepared_desk(folder: Path, base_model: Path, **environment: str) -> Iterator[PreparedDesk]:
    """The demo desk, except that change_pin (one of the tiny model's intents) needs to know which card: its form.
    `environment` adds settings (SUPPORTFLOW_...) for the stack's stores."""
    if shutil.which("rasa", path=str(ROOT / ".venv-rasa" / "bin")) is None:
        pytest.fail("Rasa is not installed: `make rasa-venv` (make test does it)")
    from flows.train import train
    from supportflow.dialogue.build import build_dialogue
    from supportflow.ingest.load import ingest_file
    from supportflow.kb.build import build_knowledge_base
    from supportflow.lake import open_lake
    from supportflow.settings import get_settings
    from supportflow.validate.snapshot import validate_lake

    desk = folder / "workspace"
    source = ROOT / "examples" / "banking77"
    shutil.copytree(source, desk, ignore=lambda folder, names: ["data"] if Path(folder) == source else [])
    catalogue = desk / "intents.yaml"
    catalogue.write_text(catalogue.read_text().replace("\n- change_pin\n", "\n- name: change_pin\n  needs: [card_type]\n"))
    with classifier_settings(folder, base_model), pytest.MonkeyPatch.context() as patch:
        patch.setenv("SUPPORTFLOW_WORKSPACE", str(desk))
        patch.setenv("SUPPORTFLOW_KB_DIR", str(folder / "kb"))
        patch.setenv("SUPPORTFLOW_KB_MODEL_CACHE", str(ROOT / "models" / "embedder"))
        patch.setenv("SUPPORTFLOW_KB_SOURCES", f'["{ROOT / "examples" / "banking77" / "kb"}"]')
        patch.setenv("SUPPORTFLOW_RASA_PROJECT_DIR", str(folder / "rasa"))
        patch.setenv("SUPPORTFLOW_HANDOFF_DB_URL", f"sqlite:///{folder / 'handoff.db'}")
        patch.setenv("SUPPORTFLOW_BENTOML_HOME", str(folder / "bentoml"))
        patch.setenv("SUPPORTFLOW_RUN_DIR", str(folder / "run"))
        patch.setenv("SUPPORTFLOW_TWILIO_AUTH_TOKEN", TWILIO_TOKEN)
        patch.setenv("SUPPORTFLOW_SECRET_KEY", SECRET_KEY)
        patch.setenv("SUPPORTFLOW_SERVING_THREADS", "1")
        for name, value in environment.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        try:
            settings = get_settings()
            rows = tiny_rows()
            tickets = folder / "tickets.csv"
            rows.to_csv(tickets, index=False)
            lake = open_lake(settings)
            ingest_file(str(tickets), lake, settings, source="banking77")
            validate_lake(lake, settings)
            train()  # on the session's Prefect test API: a second harness would leave the events client on a dead server
            build_knowledge_base(settings)
            dialogue = build_dialogue(settings, lake)
            yield PreparedDesk(settings, rows, dialogue.project, dialogue.model)
        finally:
            get_settings.cache_clear()


def surest_example(classifier_url: str, texts: list[str], intent: str) -> str:
    """The example of `intent`, among `texts`, the served tiny classifier is surest of, above its threshold and within
    its unknown-intent bounds. A tiny model grown from a random initialisation (its seed depends on which tests ran
    first) is not sure of every example, and the bot hands off one it is unsure of: a dialogue test needs one it is
    sure of. One text a call, as the bot asks: the int8 variant scales its activations per batch, so a borderline
    text's figures move with the texts beside it."""
    assert texts, f"no {intent} examples to choose from"
    results = [httpx.post(f"{classifier_url}/classify", json={"texts": [text]}, timeout=60).json()[0] for text in texts]
    threshold = httpx.post(f"{classifier_url}/model", json={}, timeout=60).json()["threshold"]
    sure = [(r["confidence"], text) for text, r in zip(texts, results, strict=True) if r["intent"] == intent and not r["out_of_scope"]]
    assert sure, f"the classifier recognises no {intent} example within its unknown-intent bounds: {results[:3]}"
    assert max(sure)[0] >= threshold, f"the tiny classifier is sure of no {intent} example at threshold {threshold}"
    return max(sure)[1]
