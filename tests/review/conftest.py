"""The review tests' embedder: the knowledge base's MiniLM, one per session (its ONNX export is cached in models/)."""

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from supportflow.bot.turns import Turn

ROOT = Path(__file__).resolve().parents[2]
MODEL_CACHE = ROOT / "models" / "embedder"


@pytest.fixture(scope="session")
def embed() -> Callable[[Sequence[str]], np.ndarray]:
    from supportflow.kb.embeddings import embedder

    return embedder(MODEL_CACHE).embed


def answered(text: str, ranking: list[tuple[str, float]], **fields: object) -> Turn:
    """A turn the bot answered from the knowledge base, with the classifier's ranking."""
    return Turn(
        conversation_id="c1",
        channel="webchat",
        text=text,
        intent=ranking[0][0],
        confidence=ranking[0][1],
        route="kb",
        ranking=[{"intent": intent, "confidence": confidence} for intent, confidence in ranking],
        **({"kb_score": 0.9} | fields),
    )
