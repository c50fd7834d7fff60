"""Classify messages with a trained classifier folder in torch: training's evaluation, the registry's re-scoring
and pyfunc model, and the `torch` serving variant.

Serving (`supportflow.classifier.served`) imports this only for that variant; the ONNX variants run without torch.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, DistilBertForSequenceClassification, PreTrainedTokenizerBase

from supportflow.classifier.artifacts import EMBEDDING_POOLING
from supportflow.classifier.inference import ClassifierParts, ModelOutputs, classify_outputs


def pooled_embedding(hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """What the unknown-intent detector and the prototypes measure: the last layer's token vectors averaged over the
    message's tokens (padding left out), or its first ([CLS]) vector in folders trained before ("cls").

    Why the average: fine-tuning with cross-entropy makes [CLS] a summary for the head, and a message of an intent the
    model never saw is pulled towards a known one there; the average keeps more of what the message says. On the
    open-intent protocol's screening models the Mahalanobis distance on it ranked unknown messages above known ones
    more often than on [CLS] (Chen et al., "Holistic Sentence Embeddings for Better Out-of-Distribution Detection",
    Findings of EMNLP 2022, found the same); docs/classifier.md has the figures."""
    last = hidden_states[-1]
    if pooling == "cls":
        return last[:, 0]
    mask = attention_mask.unsqueeze(-1).to(last.dtype)
    return (last * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


@torch.inference_mode()
def predict_outputs(
    model: DistilBertForSequenceClassification,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 128,
    pooling: str = EMBEDDING_POOLING,
) -> ModelOutputs:
    """Logits and pooled embeddings in input order; batches are built from length-sorted texts so padding stays small."""
    model.eval()
    order = np.argsort([len(text) for text in texts], kind="stable")
    logits = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    embeddings = np.zeros((len(texts), model.config.dim), dtype=np.float32)
    truncated = np.zeros(len(texts), dtype=bool)
    for start in range(0, len(texts), batch_size):
        chosen = order[start : start + batch_size]
        chunk = [texts[i] for i in chosen]
        truncated[chosen] = [len(ids) > max_length for ids in tokenizer(chunk, truncation=False)["input_ids"]]
        batch = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        output = model(**batch, output_hidden_states=True)
        logits[chosen] = output.logits.float().numpy()
        embeddings[chosen] = pooled_embedding(output.hidden_states, batch["attention_mask"], pooling).float().numpy()
    return ModelOutputs(logits=logits, embeddings=embeddings, truncated=truncated)


class IntentClassifier:
    """A trained classifier folder, ready to answer the classify contract."""

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.folder = Path(folder)
        self.parts = ClassifierParts.load(self.folder)
        self.card = self.parts.card
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        self.model = DistilBertForSequenceClassification.from_pretrained(str(self.folder)).eval()

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        return self.parts.probabilities(texts, self.outputs(texts))

    def outputs(self, texts: list[str]) -> ModelOutputs:
        return predict_outputs(self.model, self.tokenizer, texts, self.card.max_length, pooling=self.card.embedding_pooling)

    def classify(self, texts: Sequence[str], top_k: int | None = 10) -> list[dict]:
        if not texts:
            return []
        texts = list(texts)
        return classify_outputs(texts, self.outputs(texts), self.parts, top_k)
