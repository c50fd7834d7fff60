"""Classify messages with a trained intent classifier: the design's ranking contract.

A classifier folder holds the fine-tuned model and tokenizer plus `classifier.json` (label map,
temperature, fallback threshold). Serving loads the registry's `champion` through `load_champion`.
"""

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, DistilBertForSequenceClassification, PreTrainedTokenizerBase

from supportflow.settings import Settings

CLASSIFIER_CARD = "classifier.json"
MODEL_ARTIFACT = "classifier"  # the folder's name inside the logged MLflow model


@dataclass(frozen=True)
class ClassifierCard:
    """What serving needs besides the weights; stored with the model."""

    labels: list[str]
    temperature: float
    threshold: float
    coverage_at_threshold: float
    precision_at_threshold: float
    target_precision: float
    max_length: int
    base_model: str
    snapshot_id: str

    def save(self, folder: Path) -> None:
        (folder / CLASSIFIER_CARD).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> "ClassifierCard":
        return cls(**json.loads((folder / CLASSIFIER_CARD).read_text()))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


@torch.inference_mode()
def predict_logits(
    model: DistilBertForSequenceClassification,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 128,
) -> np.ndarray:
    """Logits in input order; batches are built from length-sorted texts so padding stays small."""
    model.eval()
    order = np.argsort([len(text) for text in texts], kind="stable")
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        chosen = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in chosen], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out[chosen] = model(**batch).logits.float().numpy()
    return out


def ranking(probabilities: np.ndarray, labels: Sequence[str], top_k: int | None = None) -> list[dict]:
    """Per text: `{"intent", "confidence", "ranking": [{"intent", "confidence"}, ...]}`, best first."""
    results = []
    for row in probabilities:
        order = np.argsort(-row)[: top_k or len(labels)]
        ranked = [{"intent": labels[i], "confidence": float(row[i])} for i in order]
        results.append({"intent": ranked[0]["intent"], "confidence": ranked[0]["confidence"], "ranking": ranked})
    return results


class IntentClassifier:
    """A trained classifier folder, ready to answer the classify contract."""

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.folder = Path(folder)
        self.card = ClassifierCard.load(self.folder)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        self.model = DistilBertForSequenceClassification.from_pretrained(str(self.folder)).eval()

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        return softmax(predict_logits(self.model, self.tokenizer, list(texts), self.card.max_length), self.card.temperature)

    def classify(self, texts: Sequence[str], top_k: int | None = 10) -> list[dict]:
        return ranking(self.probabilities(texts), self.card.labels, top_k)


def load_champion(settings: Settings, alias: str = "champion") -> IntentClassifier:
    """Download the registry's aliased version (serving's entry point) and load it."""
    from supportflow.classifier.registry import download_classifier  # the registry imports this module

    return IntentClassifier(download_classifier(settings, f"@{alias}"), threads=settings.train_threads)
