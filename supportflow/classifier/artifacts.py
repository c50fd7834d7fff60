"""A trained classifier folder, as training writes it and serving reads it, and how to fetch one from the registry.

Serving imports this, never the training modules: the folder's layout, its card and the download are all it
needs before it picks a runtime (ONNX Runtime, or torch for the `torch` variant). The portable MLflow model imports
it too, in an environment without the project's settings (pydantic-settings), hence `Settings` for type checks only.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from supportflow.errors import RegistryError

if TYPE_CHECKING:
    from supportflow.settings import Settings

CLASSIFIER_CARD = "classifier.json"
MODEL_ARTIFACT = "classifier"  # the folder's name inside the logged MLflow model
ONNX_DIR = "onnx"
VARIANTS = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
# The pretrained encoder the classifier was fine-tuned from, kept frozen for the unknown-intent detector's second
# distance (ood.py); the ONNX exports run it in the same graph. Folders trained before it have none.
SENTENCE_ENCODER_DIR = "sentence_encoder"
# How a message's pooled embedding (what the unknown-intent detector and the prototypes read) is taken from the
# encoder's last layer: "mean", the average of its tokens' vectors, for every classifier trained now; "cls", the
# first token's vector, which the classification head reads, in folders trained before (`predict.pooled_embedding`).
EMBEDDING_POOLING = "mean"
POOLINGS = ("cls", "mean")


# The readers beside the fine-tuned head, and the field of `FusionWeights` and `ClassifierCard` holding each one's share.
READER_WEIGHTS = {
    "lexical": "lexical_weight",
    "prototypes": "prototype_weight",
    "sentence_prototypes": "sentence_prototype_weight",
    "sentence_neighbours": "sentence_neighbour_weight",
}


@dataclass(frozen=True)
class FusionWeights:
    """How the readers' scores add up to the served logits: `encoder / temperature + lexical_weight * lexical +
    prototype_weight * prototypes + sentence_prototype_weight * sentence_prototypes + sentence_neighbour_weight *
    sentence_neighbours + offsets`
    (`supportflow.classifier.fusion` fits them)."""

    temperature: float
    lexical_weight: float = 0.0
    prototype_weight: float = 0.0
    offsets: tuple[float, ...] = ()
    sentence_prototype_weight: float = 0.0
    sentence_neighbour_weight: float = 0.0

    def weight(self, reader: str) -> float:
        return float(getattr(self, READER_WEIGHTS[reader]))


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
    # The other readers' shares of the fused logits (`lexical.py`, `prototypes.py`, `neighbours.py`); 0 for a folder
    # without them.
    lexical_weight: float = 0.0
    prototype_weight: float = 0.0
    sentence_prototype_weight: float = 0.0
    sentence_neighbour_weight: float = 0.0
    # Per intent, added to the fused logits: the class balance (`fusion.prior_offsets`); none before it.
    logit_offsets: list[float] = field(default_factory=list)
    # The wrong-answer budget the threshold was also chosen for (calibrate.py); 1 (none) before it.
    max_wrong_answers: float = 1.0
    # The confidence the target precision was bounded with (calibrate.py); 0 (the validation precision itself) before it.
    precision_confidence: float = 0.0
    # How the folder's detector and prototypes pool the embedding they were fitted on; "cls" before the choice existed.
    embedding_pooling: str = "cls"
    # The threshold and the readers' weights were chosen on the training and validation messages read out of this many
    # folds (cross_fit.py); 0: on the validation split.
    cross_fit_folds: int = 0

    def __post_init__(self) -> None:
        if self.embedding_pooling not in POOLINGS:
            known = list(POOLINGS)
            raise RegistryError(f"the classifier card pools its embedding by {self.embedding_pooling!r}; this version knows {known}")

    def weights(self) -> "FusionWeights":
        return FusionWeights(
            self.temperature,
            lexical_weight=self.lexical_weight,
            prototype_weight=self.prototype_weight,
            offsets=tuple(self.logit_offsets),
            sentence_prototype_weight=self.sentence_prototype_weight,
            sentence_neighbour_weight=self.sentence_neighbour_weight,
        )

    def save(self, folder: Path) -> None:
        (folder / CLASSIFIER_CARD).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> "ClassifierCard":
        return cls(**json.loads((folder / CLASSIFIER_CARD).read_text()))


def read_part(path: Path, kind_key: str, expected: str, what: str) -> dict[str, np.ndarray] | None:
    """One of a classifier folder's numpy parts (the detector, the lexical reader, the prototypes, the neighbours), its
    arrays read whole; None for a folder trained before the part existed. A part written by another method is refused
    by name, never misread as this one."""
    if not path.exists():
        return None
    with np.load(path) as stored:
        if str(stored[kind_key]) != expected:
            raise RegistryError(f"{path} holds {stored[kind_key]} {what}; this version reads {expected} only")
        return {name: stored[name] for name in stored.files}


def download_classifier(settings: "Settings", reference: str) -> Path:
    """The classifier folder of a registered version (`"3"`) or alias (`"@production"`), fetched locally. MLflow is
    imported here, not with the module: building and reading a folder (a benchmark on a machine without the
    registry's client) needs none of it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    separator = "" if reference.startswith("@") else "/"
    uri = f"models:/{settings.registered_model_name}{separator}{reference}"
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)  # `models:/` resolves through the registry URI, not the tracking one
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=settings.mlflow_tracking_uri))
    except MlflowException as error:
        raise RegistryError(f"{uri} cannot be downloaded from {settings.mlflow_tracking_uri}: {error.message}") from error
    return local / "artifacts" / MODEL_ARTIFACT
