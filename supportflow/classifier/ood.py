"""The unknown-intent detector: how far a message lies from every intent the model learnt.

Fitted without a single out-of-scope message, since a desk has none labelled: each intent's centre and one shared
covariance of the encoder's pooled embedding ([CLS] of the last layer) over the training messages, then the
Mahalanobis distance from a message to its nearest centre (Lee et al., NeurIPS 2018; Podolskiy et al., AAAI 2021,
for fine-tuned transformers on intent data). A message is out of scope when that distance passes a threshold read
off the in-scope validation messages alone (the `quantile` of their distances): by construction about 1 - quantile
of in-scope traffic is flagged, whatever the out-of-scope traffic looks like.

numpy only: the portable pyfunc and the ONNX serving path load it without torch.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from supportflow.errors import RegistryError

DETECTOR_FILE = "ood.npz"
DEFAULT_QUANTILE = 0.99
METHOD = "mahalanobis"
# Added to the covariance's eigenvalues, relative to their mean: a desk with fewer training messages than embedding
# dimensions has a singular covariance, whose inverse would make every new message look infinitely far.
RIDGE = 1e-3


@dataclass(frozen=True)
class OutOfScopeDetector:
    centres: np.ndarray  # (intents, dim): each intent's mean embedding, whitened
    whitening: np.ndarray  # (dim, dim): maps an embedding to where the shared covariance is the identity
    threshold: float  # a distance above it is out of scope
    quantile: float  # the share of in-scope validation messages within the threshold

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Per message, the Mahalanobis distance to the nearest intent's centre."""
        whitened = np.asarray(embeddings, dtype=np.float64) @ self.whitening
        squared = (whitened**2).sum(axis=1, keepdims=True) - 2 * whitened @ self.centres.T + (self.centres**2).sum(axis=1)[np.newaxis, :]
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))

    def save(self, folder: Path) -> None:
        np.savez(
            folder / DETECTOR_FILE,
            centres=self.centres,
            whitening=self.whitening,
            threshold=self.threshold,
            quantile=self.quantile,
            method=METHOD,
        )

    @classmethod
    def load(cls, folder: Path) -> "OutOfScopeDetector | None":
        """The folder's detector; None for a model trained before detectors were (it flags nothing)."""
        path = folder / DETECTOR_FILE
        if not path.exists():
            return None
        with np.load(path) as stored:
            if str(stored["method"]) != METHOD:
                raise RegistryError(f"{path} holds a {stored['method']} detector; this version reads {METHOD} only")
            return cls(stored["centres"], stored["whitening"], float(stored["threshold"]), float(stored["quantile"]))


def fit_detector(
    embeddings: np.ndarray, labels: np.ndarray, validation_embeddings: np.ndarray, quantile: float = DEFAULT_QUANTILE
) -> OutOfScopeDetector:
    """Centres and shared covariance from the training messages; the threshold from the validation messages, which the
    centres never saw (training messages sit closer to their centres than new in-scope ones do)."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"the detector's quantile must lie strictly between 0 and 1, not {quantile}")
    if len(validation_embeddings) == 0:
        raise ValueError("the unknown-intent detector needs validation messages to choose its threshold on")
    embeddings = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    means = np.stack([embeddings[labels == c].mean(axis=0) for c in classes])
    centred = embeddings - means[np.searchsorted(classes, labels)]
    covariance = centred.T @ centred / len(embeddings)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    eigenvalues = np.maximum(eigenvalues, 0.0) + RIDGE * max(float(eigenvalues.mean()), np.finfo(np.float64).tiny)
    whitening = eigenvectors / np.sqrt(eigenvalues)
    unthresholded = OutOfScopeDetector(means @ whitening, whitening, threshold=np.inf, quantile=quantile)
    threshold = float(np.quantile(unthresholded.scores(validation_embeddings), quantile))
    return OutOfScopeDetector(unthresholded.centres, whitening, threshold, quantile)
