"""Classify messages with a trained classifier folder in torch: training's evaluation, the registry's re-scoring
and pyfunc model, and the `torch` serving variant.

Serving (`supportflow.classifier.served`) imports this only for that variant; the ONNX variants run without torch.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, DistilBertForSequenceClassification, PreTrainedTokenizerBase

from supportflow.classifier.inference import ClassifierParts, ModelOutputs, classify_outputs


def pooled_embedding(hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """What the unknown-intent detector measures: the last layer's [CLS] vector, which the classification head reads."""
    return hidden_states[-1][:, 0]


@torch.inference_mode()
def predict_outputs(
    model: DistilBertForSequenceClassification,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 128,
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
        embeddings[chosen] = pooled_embedding(output.hidden_states).float().numpy()
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
        return self.parts.probabilities(texts, predict_outputs(self.model, self.tokenizer, texts, self.card.max_length))

    def classify(self, texts: Sequence[str], top_k: int | None = 10) -> list[dict]:
        if not texts:
            return []
        texts = list(texts)
        outputs = predict_outputs(self.model, self.tokenizer, texts, self.card.max_length)
        return classify_outputs(texts, outputs, self.parts, top_k)
