"""notebooks/drift_report.ipynb executed against a small synthetic lake: turns, agents' labels, MLflow."""

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from supportflow.bot.handoff import HandoffQueue
from supportflow.bot.turns import Turn, TurnLog
from supportflow.drift.figures import DriftReference
from tests.drift.conftest import LABELS, START, register, use_store, window

pytestmark = pytest.mark.slow  # a Jupyter kernel runs the drift notebook against MLflow

ROOT = Path(__file__).resolve().parents[2]
# Handed-off messages and what the agent who resolved each said it was.
HANDOFFS = [
    ("my card still has not come after two weeks", "card_arrival", 0.9, "card_arrival"),  # KB had nothing; agent agrees
    ("I need a new pin number please", "nlu_fallback", 0.5, "change_pin"),  # not understood
    ("where can I use apple pay", "atm_support", 0.8, "apple_pay_or_google_pay"),  # wrong intent
]


@pytest.fixture
def store(tmp_path: Path, reference: DriftReference, texts: dict) -> Iterator[Path]:
    from supportflow.lake import open_lake
    from supportflow.settings import get_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SUPPORTFLOW_LAKE_URL", str(tmp_path / "lake"))
        client = use_store(patch, f"sqlite:///{tmp_path / 'mlflow.db'}")
        get_settings.cache_clear()
        settings = get_settings()
        mlflow.create_experiment("intent-classifier", artifact_location=str(tmp_path / "mlartifacts"))
        client.set_registered_model_alias("intent-classifier", "champion", register(client, reference))

        lake = open_lake(settings)
        log = TurnLog(lake, flush_every=10_000)
        for row in window(np.random.default_rng(21), texts, 120, START).to_dict("records"):
            log.record(Turn(**{key: value for key, value in row.items() if value is not None and value == value}))
        queue = HandoffQueue(f"sqlite:///{tmp_path / 'handoff.db'}", lake, tuple(LABELS))
        for i, (text, intent, confidence, label) in enumerate(HANDOFFS):
            log.record(Turn(conversation_id=f"h{i}", channel="webchat", text=text, intent=intent, confidence=confidence, route="handoff"))
            handoff = queue.enqueue(f"h{i}", "webchat", [("customer", text)], "test", intent, question=text)
            queue.claim(handoff, "alice")
            queue.resolve(handoff, "alice", label)
        log.flush()
        try:
            yield tmp_path
        finally:
            get_settings.cache_clear()


def test_notebook_reports_drift_and_where_agents_disagree(store: Path) -> None:
    assert os.environ["SUPPORTFLOW_LAKE_URL"] == str(store / "lake")  # the kernel inherits the settings
    notebook = nbformat.read(ROOT / "notebooks" / "drift_report.ipynb", as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    text = "\n".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "drift status: ok" in text and "(123 turns)" in text
    assert "reference: intent-classifier v1" in text
    assert "lowest-confidence turns: 15 shown of 123 classified" in text
    assert "most handed-off intent: nlu_fallback" in text
    assert "agent labels: 3, matched to turns: 3, disagree with the prediction: 2" in text
    assert "where can I use apple pay" in text and "apple_pay_or_google_pay" in text
    assert "confusion between predicted intent and agent label" in text
    assert any(
        output.get("output_type") == "display_data" and "image/png" in output.get("data", {})
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )
