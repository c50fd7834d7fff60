"""The classifier's third reader: how close a message's embedding lies to each intent's centre.

Why: the fine-tuned head is a softmax layer, and an intent with five training messages among intents with a hundred
barely moves it; the encoder's embedding space still places those five messages together. An intent's centre is the
mean of its training messages' pooled embeddings (the last layer's token vectors averaged, which the unknown-intent
detector reads too), and a message's score for it is the cosine of the two: a nearest-centre classifier (prototypical
networks, Snell et al., NeurIPS 2017), which is as good at five examples as at five hundred. On a long-tail cut of
BANKING77 it recognised the rare intents far better than the head (docs/classifier.md, "The long tail").

A second set of centres is taken in the pretrained encoder's space (the embedding the unknown-intent detector reads,
the ONNX export's third output): fine-tuning on a few messages of an intent barely shapes the fine-tuned space around
it, while the pretrained one was trained to place paraphrases together (docs/classifier.md, "The long tail").

numpy only, from the embeddings serving computes anyway: one product per message and set.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from supportflow.classifier.artifacts import read_part

PROTOTYPES_FILE = "prototypes.npz"  # centres of the fine-tuned encoder's pooled embeddings
SENTENCE_PROTOTYPES_FILE = "sentence_prototypes.npz"  # centres of the pretrained encoder's
METHOD = "cosine-to-mean"


def unit_length(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (a zero row stays zero): what a cosine is a dot product of."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class Prototypes:
    centres: np.ndarray  # (intents, dim), unit length; an intent without training messages has a zero row

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Per message, its cosine to each intent's centre."""
        return unit_length(np.asarray(embeddings, dtype=np.float32)) @ self.centres.T

    def save(self, folder: Path, file: str = PROTOTYPES_FILE) -> None:
        np.savez(folder / file, centres=self.centres, method=METHOD)

    @classmethod
    def load(cls, folder: Path, file: str = PROTOTYPES_FILE) -> "Prototypes | None":
        """The folder's prototypes; None for a model trained before them (the other readers answer alone)."""
        stored = read_part(folder / file, "method", METHOD, "prototypes")
        return None if stored is None else cls(stored["centres"].astype(np.float32))


def fit_prototypes(embeddings: np.ndarray, label_ids: np.ndarray, n_labels: int) -> Prototypes:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    label_ids = np.asarray(label_ids)
    centres = np.zeros((n_labels, embeddings.shape[1]), dtype=np.float64)
    for label in np.unique(label_ids):
        centres[label] = embeddings[label_ids == label].mean(axis=0)
    present = np.linalg.norm(centres, axis=1) > 0
    centres[present] = unit_length(centres[present])
    return Prototypes(centres.astype(np.float32))
