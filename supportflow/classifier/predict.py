"""Classify messages with a trained classifier folder in torch: training's evaluation, the registry's re-scoring
and pyfunc model, and the `torch` serving variant.

Serving (`supportflow.classifier.served`) imports this only for that variant; the ONNX variants run without torch.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, DistilBertForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from supportflow.classifier.artifacts import EMBEDDING_POOLING, SENTENCE_ENCODER_DIR
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
    sentence_encoder: PreTrainedModel | None = None,
) -> ModelOutputs:
    """Logits and pooled embeddings in input order, and with `sentence_encoder` (the pretrained encoder, frozen) its
    mean-pooled embedding of the same tokens; batches are built from length-sorted texts so padding stays small."""
    model.eval()
    order = np.argsort([len(text) for text in texts], kind="stable")
    logits = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    embeddings = np.zeros((len(texts), model.config.dim), dtype=np.float32)
    sentences = None if sentence_encoder is None else np.zeros((len(texts), sentence_encoder.config.hidden_size), dtype=np.float32)
    truncated = np.zeros(len(texts), dtype=bool)
    for start in range(0, len(texts), batch_size):
        chosen = order[start : start + batch_size]
        chunk = [texts[i] for i in chosen]
        truncated[chosen] = [len(ids) > max_length for ids in tokenizer(chunk, truncation=False)["input_ids"]]
        batch = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        output = model(**batch, output_hidden_states=True)
        logits[chosen] = output.logits.float().numpy()
        embeddings[chosen] = pooled_embedding(output.hidden_states, batch["attention_mask"], pooling).float().numpy()
        if sentence_encoder is not None and sentences is not None:
            sentences[chosen] = sentence_embedding(sentence_encoder, batch["input_ids"], batch["attention_mask"]).float().numpy()
    return ModelOutputs(logits=logits, embeddings=embeddings, truncated=truncated, sentence_embeddings=sentences)


def sentence_embedding(encoder: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The pretrained encoder's sentence embedding, as sentence-transformers takes it from all-MiniLM-L6-v2: its last
    layer's token vectors averaged (the detector normalises it)."""
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return pooled_embedding((hidden,), attention_mask, "mean")


def load_sentence_encoder(folder: Path) -> PreTrainedModel | None:
    """The classifier folder's pretrained encoder, frozen; None for a folder trained before it."""
    path = Path(folder) / SENTENCE_ENCODER_DIR
    return AutoModel.from_pretrained(str(path), attn_implementation="eager").eval() if path.is_dir() else None


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
        self.sentence_encoder = load_sentence_encoder(self.folder)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        return self.parts.probabilities(texts, self.outputs(texts))

    def outputs(self, texts: list[str]) -> ModelOutputs:
        return predict_outputs(
            self.model,
            self.tokenizer,
            texts,
            self.card.max_length,
            pooling=self.card.embedding_pooling,
            sentence_encoder=self.sentence_encoder,
        )

    def classify(self, texts: Sequence[str], top_k: int | None = 10) -> list[dict]:
        if not texts:
            return []
        texts = list(texts)
        return classify_outputs(texts, self.outputs(texts), self.parts, top_k)
