"""The whole loop on a tiny scale: six intents first (two held back for the drift simulation), the tiny
DistilBERT, the demo knowledge base, a real Rasa, real bundles; everything in one temporary folder."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from tests.classifier.conftest import TINY_INTENTS, classifier_settings, tiny_base, tiny_rows  # noqa: F401 - shared fixture

ROOT = Path(__file__).resolve().parents[2]
HELD_BACK = ["lost_or_stolen_phone", "terminate_account"]  # unseen at first: the drift the monitor must catch
FIRST_INTENTS = [intent for intent in TINY_INTENTS if intent not in HELD_BACK]
EVALUATE_EXAMPLES = 6  # test messages each release replays through its candidate bot: a few, to keep the loop quick


@contextmanager
def loop_settings(folder: Path, base: Path, workspace: Path = ROOT / "examples" / "banking77") -> Iterator[Path]:
    """Every store in `folder`; the desk, its tickets, articles and dialogue, from `workspace`."""
    from supportflow.settings import get_settings

    if shutil.which("rasa", path=str(ROOT / ".venv-rasa" / "bin")) is None:
        pytest.fail("Rasa is not installed: `make rasa-venv` (make test does it)")
    with classifier_settings(folder, base), pytest.MonkeyPatch.context() as patch:
        patch.setenv("SUPPORTFLOW_KB_DIR", str(folder / "kb"))
        patch.setenv("SUPPORTFLOW_KB_MODEL_CACHE", str(ROOT / "models" / "embedder"))
        patch.setenv("SUPPORTFLOW_WORKSPACE", str(workspace))
        patch.setenv("SUPPORTFLOW_RASA_PROJECT_DIR", str(folder / "rasa"))
        patch.setenv("SUPPORTFLOW_HANDOFF_DB_URL", f"sqlite:///{folder / 'handoff.db'}")
        patch.setenv("SUPPORTFLOW_BENTOML_HOME", str(folder / "bentoml"))
        patch.setenv("SUPPORTFLOW_RUN_DIR", str(folder / "run"))
        patch.setenv("SUPPORTFLOW_RELEASE_POLL_SECONDS", "1")
        patch.setenv("SUPPORTFLOW_SERVING_THREADS", "1")
        patch.setenv("SUPPORTFLOW_TURN_FLUSH_SECONDS", "1")
        patch.setenv("SUPPORTFLOW_EVALUATE_EXAMPLES", str(EVALUATE_EXAMPLES))
        # No offers of close intents: the loop's unseen intents must reach agents as handoffs, to be labelled.
        patch.setenv("SUPPORTFLOW_OFFER_OPTIONS", "0")
        patch.setenv("SUPPORTFLOW_RESULTS_DIR", str(folder / "results"))
        get_settings.cache_clear()
        try:
            yield folder
        finally:
            get_settings.cache_clear()


def first_tickets() -> pd.DataFrame:
    rows = tiny_rows()
    return rows[rows["category"].isin(FIRST_INTENTS)].reset_index(drop=True)
