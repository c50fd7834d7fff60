"""The classifier as served: the registry's champion, in the variant its training run chose.

Training exports ONNX (fp32 and int8) and records, as the run's `serving_variant` tag, the fastest variant
whose accuracy stays within tolerance of torch's; serving honours that choice (or
`SUPPORTFLOW_SERVING_VARIANT`), so the served model is exactly the one that passed the gate.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from supportflow.classifier.onnx_export import ONNX_DIR, VARIANTS, onnx_logits, onnx_session
from supportflow.classifier.predict import ClassifierCard, IntentClassifier, ranking, softmax
from supportflow.classifier.registry import download_classifier
from supportflow.errors import RegistryError
from supportflow.release.production import served_version
from supportflow.settings import Settings


class ServingClassifier:
    def __init__(self, folder: Path, variant: str, version: str, threads: int) -> None:
        self.folder, self.variant, self.version = folder, variant, version
        self.card = ClassifierCard.load(folder)
        if variant == "torch":
            self._torch = IntentClassifier(folder, threads=threads)
            self.tokenizer = self._torch.tokenizer
        else:
            from transformers import AutoTokenizer

            path = folder / ONNX_DIR / VARIANTS[variant]
            if not path.exists():
                raise RegistryError(f"version {version} has no {variant} ONNX export at {path}")
            self.session = onnx_session(path, threads)
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        if self.variant == "torch":
            return self._torch.probabilities(texts)
        return softmax(onnx_logits(self.session, self.tokenizer, list(texts), self.card.max_length), self.card.temperature)

    def classify(self, texts: Sequence[str], top_k: int = 10) -> list[dict]:
        if not texts:
            return []
        return ranking(self.probabilities(texts), self.card.labels, top_k)

    def describe(self) -> dict:
        return {
            "version": self.version,
            "variant": self.variant,
            "intents": len(self.card.labels),
            "threshold": self.card.threshold,
            "temperature": self.card.temperature,
            "snapshot_id": self.card.snapshot_id,
        }


def load_version(settings: Settings, version: str, chosen_variant: str) -> ServingClassifier:
    variant = chosen_variant if settings.serving_variant == "auto" else settings.serving_variant
    return ServingClassifier(download_classifier(settings, version), variant, version, settings.serving_threads)


def load_serving_classifier(settings: Settings) -> ServingClassifier:
    return load_version(settings, *served_version(settings))


def load_bundled_classifier(settings: Settings, folder: Path, labels: dict[str, str]) -> ServingClassifier:
    """The model a bundle carries: the version and variant its bundle stage recorded."""
    variant = labels.get("variant", "torch") if settings.serving_variant == "auto" else settings.serving_variant
    return ServingClassifier(folder, variant, labels.get("version", "unknown"), settings.serving_threads)
