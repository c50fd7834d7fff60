"""Builders for the drift tests: a training reference from real BANKING77 text, and turn-log windows.

The reference comes from `build_reference` on synthetic calibrated probabilities (the monitor never
sees the model itself) and the real training texts of eight intents; windows are turn-log frames with
the schema the bot writes, drawn either like the reference or with one thing changed.
"""

import os
from datetime import UTC, datetime, timedelta

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from mlflow import MlflowClient

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from supportflow.bot.turns import TURN_SCHEMA  # noqa: E402
from supportflow.drift.figures import REFERENCE_ARTIFACT, DriftReference, build_reference  # noqa: E402
from tests.classifier.conftest import TINY_INTENTS, tiny_rows  # noqa: E402

THRESHOLD = 0.5
LABELS = sorted(TINY_INTENTS)


def confident(rng: np.random.Generator, n: int) -> np.ndarray:
    """Top confidences like a calibrated model on familiar text: mostly high, a few below 0.5."""
    return rng.beta(6, 1.2, size=n)


def probabilities(rng: np.random.Generator, intents: list[int], top: np.ndarray, k: int) -> np.ndarray:
    rows = np.full((len(intents), k), 0.0)
    for row, (intent, p) in enumerate(zip(intents, top, strict=True)):
        rows[row] = (1 - p) / (k - 1)
        rows[row, intent] = p
    return rows


def texts_by_intent() -> dict[str, dict[str, list[str]]]:
    """Per intent, texts for the reference's train and validation splits and unseen ones for windows."""
    rows = tiny_rows().sample(frac=1.0, random_state=0)
    split: dict[str, dict[str, list[str]]] = {}
    for intent, group in rows.groupby("category"):
        texts = group["text"].tolist()
        split[str(intent)] = {"train": texts[:-60], "validation": texts[-60:-30], "window": texts[-30:]}
    return split


@pytest.fixture(scope="session")
def texts() -> dict[str, dict[str, list[str]]]:
    return texts_by_intent()


@pytest.fixture(scope="session")
def reference(texts: dict[str, dict[str, list[str]]]) -> DriftReference:
    rng = np.random.default_rng(7)
    intents = [i for i in range(len(LABELS)) for _ in range(100)]
    probs = probabilities(rng, intents, confident(rng, len(intents)), len(LABELS))
    train = [t for label in LABELS for t in texts[label]["train"]]
    validation = [t for label in LABELS for t in texts[label]["validation"]]
    return build_reference(probs, LABELS, THRESHOLD, train, validation, "snap-test")


def window(
    rng: np.random.Generator,
    texts: dict[str, dict[str, list[str]]],
    n: int,
    start: datetime,
    *,
    intents: list[str] | None = None,
    confidences: np.ndarray | None = None,
    phrases: list[str] | None = None,
    model_version: str = "1",
) -> pd.DataFrame:
    """n turns over ten minutes from `start`, routed as the served bot routes them: below the threshold
    Rasa logs `nlu_fallback` at the threshold and the bot hands off; otherwise a knowledge-base answer."""
    intents = intents or LABELS
    chosen = rng.choice(intents, size=n)
    confidences = confident(rng, n) if confidences is None else confidences
    rows = []
    for i, (intent, confidence) in enumerate(zip(chosen, confidences, strict=True)):
        text = str(rng.choice(phrases)) if phrases else str(rng.choice(texts[str(intent)]["window"]))
        fallback = confidence < THRESHOLD
        rows.append(
            {
                "turn_id": f"t{i}",
                "conversation_id": f"c{i}",
                "channel": "webchat",
                "received_at": start + timedelta(seconds=600 * i / max(n, 1)),
                "text": text,
                "intent": "nlu_fallback" if fallback else str(intent),
                "confidence": THRESHOLD if fallback else float(confidence),
                "route": "handoff" if fallback else "kb",
                "kb_doc_id": None if fallback else f"doc-{intent}",
                "kb_score": None if fallback else 0.8,
                "model_version": model_version,
                "latency_ms": 40.0,
                "request_id": f"r{i}",
            }
        )
    return pa.Table.from_pylist(rows, schema=TURN_SCHEMA).to_pandas()


START = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def register(client: MlflowClient, reference: DriftReference | None, name: str = "intent-classifier") -> str:
    """A registered version whose training run holds (or lacks) the drift reference; no weights are needed."""
    mlflow.set_experiment("intent-classifier")
    with mlflow.start_run() as run:
        if reference is not None:
            mlflow.log_dict(reference.model_dump(), REFERENCE_ARTIFACT)
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    return str(client.create_model_version(name, f"{run.info.artifact_uri}/reference", run_id=run.info.run_id).version)


def use_store(patch: pytest.MonkeyPatch, uri: str) -> MlflowClient:
    """Point the settings and MLflow at a test's store. MLflow's setters write MLFLOW_* environment variables,
    which notebook kernels inherit; setting them through `patch` puts them back when the test ends."""
    patch.setenv("SUPPORTFLOW_MLFLOW_TRACKING_URI", uri)
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    patch.setenv("MLFLOW_REGISTRY_URI", uri)
    patch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
