"""The classifier as served: one registry version, in the variant its training run chose.

Which version: a bundle serves the version it carries (the release's); served from the source tree, the
`production` alias's version, or the champion's before the first release (`served_version`). Training exports
ONNX (fp32 and int8) and records, as the run's `serving_variant` tag, the fastest variant whose accuracy stays
within tolerance of torch's; serving honours that choice (or `SUPPORTFLOW_SERVING_VARIANT`), so the served model
is exactly the one that passed the gate. Only the `torch` variant imports torch.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from supportflow.classifier.artifacts import ClassifierCard, download_classifier
from supportflow.classifier.inference import OnnxClassifier
from supportflow.release.production import served_version
from supportflow.settings import Settings

if TYPE_CHECKING:
    pass


class ServingClassifier:
    def __init__(self, folder: Path, variant: str, version: str, threads: int) -> None:
        self.folder, self.variant, self.version = folder, variant, version
        self.card = ClassifierCard.load(folder)
        if variant == "torch":
            from supportflow.classifier.predict import IntentClassifier

            self.model: IntentClassifier | OnnxClassifier = IntentClassifier(folder, threads=threads)
        else:
            self.model = OnnxClassifier(folder, variant, threads)

    def classify(self, texts: Sequence[str], top_k: int | None = 10) -> list[dict]:
        return self.model.classify(texts, top_k)

    def describe(self) -> dict:
        return {
            "version": self.version,
            "variant": self.variant,
            "intents": len(self.card.labels),
            "threshold": self.card.threshold,
            "ood_threshold": None if self.model.parts.detector is None else self.model.parts.detector.threshold,
            "temperature": self.card.temperature,
            "snapshot_id": self.card.snapshot_id,
        }


def load_version(settings: Settings, version: str, chosen_variant: str) -> ServingClassifier:
    variant = chosen_variant if settings.serving_variant == "auto" else settings.serving_variant
    return ServingClassifier(download_classifier(settings, version), variant, version, settings.serving_threads)


def load_serving_classifier(settings: Settings) -> ServingClassifier:
    """What the source tree serves: the production release's version (the champion before the first release)."""
    return load_version(settings, *served_version(settings))


def load_bundled_classifier(settings: Settings, folder: Path, labels: dict[str, str]) -> ServingClassifier:
    """The model a bundle carries: the version and variant its bundle stage recorded."""
    variant = labels.get("variant", "torch") if settings.serving_variant == "auto" else settings.serving_variant
    return ServingClassifier(folder, variant, labels.get("version", "unknown"), settings.serving_threads)
