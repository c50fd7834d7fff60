"""From a classifier's outputs to the classify contract, and running its ONNX export: what serving, the portable
MLflow model and training's checks share, so the three cannot answer the same text differently.

numpy, ONNX Runtime and the `tokenizers` library only: serving an ONNX variant must not import torch, and
transformers' tokenizer classes import it (through their configuration module). The ids and masks are the same:
a classifier folder's `tokenizer.json` is the very tokenizer transformers wraps, given the same truncation and
padding here once instead of on every call.
"""

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from supportflow.classifier.artifacts import ONNX_DIR, VARIANTS, ClassifierCard, FusionWeights
from supportflow.classifier.lexical import LexicalModel
from supportflow.classifier.neighbours import Neighbours
from supportflow.classifier.ood import OutOfScopeDetector
from supportflow.classifier.prototypes import SENTENCE_PROTOTYPES_FILE, Prototypes
from supportflow.errors import RegistryError

EMBEDDING_OUTPUT = "embedding"  # the ONNX output the unknown-intent detector reads; exports before it have logits only
# The pretrained encoder's embedding of the message (ood.py, `NearestNeighbours`), from the same graph; exports of a
# folder without a `sentence_encoder` lack it.
SENTENCE_OUTPUT = "sentence_embedding"
# Its cosine to the nearest of the detector's training messages (ood.py, `NearestNeighbours`), searched in the graph;
# exports made before, or of a folder without those neighbours, lack it, and the search is made in numpy.
NEAREST_OUTPUT = "nearest_neighbour"
# Two letters or digits in a row: the least a request is written with. A text without them (emoji, punctuation, a
# single character, nothing) asks for no intent, however the model spreads its probability.
_WORDS = re.compile(r"\w\w")


@dataclass(frozen=True)
class ModelOutputs:
    logits: np.ndarray  # (texts, intents)
    embeddings: np.ndarray | None  # (texts, dim): the pooled embedding; None from an export without it
    truncated: np.ndarray  # (texts,): the text was longer than the model reads, and only its beginning was classified
    sentence_embeddings: np.ndarray | None = None  # (texts, dim): the pretrained encoder's; None without one
    nearest_cosines: np.ndarray | None = None  # (texts,): its cosine to the nearest neighbour; None where not searched


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Readings:
    """What each of the classifier's readers says of a batch of messages, per intent (`fusion.py`)."""

    encoder: np.ndarray  # the fine-tuned head's logits
    lexical: np.ndarray | None = None  # the TF-IDF reader's logits (`lexical.py`)
    prototypes: np.ndarray | None = None  # the cosine to each intent's centre (`prototypes.py`)
    sentence_prototypes: np.ndarray | None = None  # the same in the pretrained encoder's space
    sentence_neighbours: np.ndarray | None = None  # the cosine to each intent's nearest training message there (`neighbours.py`)

    def beside_head(self) -> dict[str, np.ndarray]:
        """The readers other than the head that read this batch, by name (`artifacts.READER_WEIGHTS`)."""
        present = {
            "lexical": self.lexical,
            "prototypes": self.prototypes,
            "sentence_prototypes": self.sentence_prototypes,
            "sentence_neighbours": self.sentence_neighbours,
        }
        return {name: reading for name, reading in present.items() if reading is not None}


def fused_softmax(readings: Readings, weights: FusionWeights) -> np.ndarray:
    """The served confidences: the readers' scores added with the fitted weights, then the class balance's offsets."""
    fused = readings.encoder / weights.temperature
    for name, reading in readings.beside_head().items():
        weight = weights.weight(name)
        if weight > 0:
            fused = fused + weight * reading
    if weights.offsets:
        fused = fused + np.asarray(weights.offsets)
    return softmax(fused)


@dataclass(frozen=True)
class ClassifierParts:
    """What a classifier folder holds besides the encoder: the card, the unknown-intent detector and the other
    readers; a folder trained before one of them has None in its place, and is served without it."""

    card: ClassifierCard
    detector: OutOfScopeDetector | None
    lexical: LexicalModel | None
    prototypes: Prototypes | None
    sentence_prototypes: Prototypes | None = None
    sentence_neighbours: Neighbours | None = None

    @classmethod
    def load(cls, folder: Path) -> "ClassifierParts":
        return cls(
            ClassifierCard.load(folder),
            OutOfScopeDetector.load(folder),
            LexicalModel.load(folder),
            Prototypes.load(folder),
            Prototypes.load(folder, SENTENCE_PROTOTYPES_FILE),
            Neighbours.load(folder),
        )

    @property
    def reads_embeddings(self) -> bool:
        """Whether a reader needs the fine-tuned encoder's pooled embedding (the export's second output)."""
        return self.detector is not None or (self.prototypes is not None and self.card.prototype_weight > 0)

    @property
    def reads_sentence_embeddings(self) -> bool:
        """Whether a reader needs the pretrained encoder's embedding (the export's third output)."""
        by_detector = self.detector is not None and self.detector.neighbours is not None
        by_prototypes = self.sentence_prototypes is not None and self.card.sentence_prototype_weight > 0
        return by_detector or by_prototypes or (self.sentence_neighbours is not None and self.card.sentence_neighbour_weight > 0)

    def read(self, texts: Sequence[str], outputs: ModelOutputs) -> Readings:
        """Each reader the card gives weight to, on these messages; the encoder's outputs are computed already."""
        card = self.card
        lexical = self.lexical.scores(list(texts)) if self.lexical is not None and card.lexical_weight > 0 else None
        prototypes = None
        if self.prototypes is not None and card.prototype_weight > 0:
            if outputs.embeddings is None:
                raise RegistryError("the classifier has prototypes but its model gives no pooled embedding")
            prototypes = self.prototypes.scores(outputs.embeddings)
        sentence_prototypes = _in_sentence_space(self.sentence_prototypes, card.sentence_prototype_weight, outputs, "prototypes")
        sentence_neighbours = _in_sentence_space(self.sentence_neighbours, card.sentence_neighbour_weight, outputs, "neighbours")
        return Readings(outputs.logits, lexical, prototypes, sentence_prototypes, sentence_neighbours)

    def probabilities(self, texts: Sequence[str], outputs: ModelOutputs) -> np.ndarray:
        return fused_softmax(self.read(texts, outputs), self.card.weights())


def _in_sentence_space(reader: Prototypes | Neighbours | None, weight: float, outputs: ModelOutputs, what: str) -> np.ndarray | None:
    """A reader of the pretrained encoder's embedding, on these messages; None where it is absent or has no weight."""
    if reader is None or weight <= 0:
        return None
    if outputs.sentence_embeddings is None:
        raise RegistryError(f"the classifier has {what} in the pretrained encoder's space but no sentence embedding")
    return reader.scores(outputs.sentence_embeddings)


def ranking(probabilities: np.ndarray, labels: Sequence[str], top_k: int | None = None) -> list[dict]:
    """Per text: `{"intent", "confidence", "ranking": [{"intent", "confidence"}, ...]}`, best first."""
    results = []
    for row in probabilities:
        order = np.argsort(-row)[: top_k or len(labels)]
        ranked = [{"intent": labels[i], "confidence": float(row[i])} for i in order]
        results.append({"intent": ranked[0]["intent"], "confidence": ranked[0]["confidence"], "ranking": ranked})
    return results


def onnx_tokenizer(folder: Path, max_length: int) -> Tokenizer:
    """The classifier folder's tokenizer, truncating to the length it was trained with and padding each batch to
    its longest text, as the transformers tokenizer is called in training."""
    path = folder / "tokenizer.json"
    if not path.exists():
        raise RegistryError(f"{folder} has no tokenizer.json (a fast tokenizer), which its ONNX variants are served with")
    tokenizer = Tokenizer.from_file(str(path))
    pad = json.loads((folder / "tokenizer_config.json").read_text()).get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    pad_id = None if pad is None else tokenizer.token_to_id(pad)
    if pad_id is None:
        raise RegistryError(f"the tokenizer in {folder} names no padding token its vocabulary holds")
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad)
    return tokenizer


def onnx_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_outputs(session: ort.InferenceSession, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 128) -> ModelOutputs:
    """Logits (and the pooled embedding, the pretrained encoder's and its nearest neighbour's cosine, when the export
    has them) in input order;
    batches are built from length-sorted texts so padding stays small."""
    present = {output.name for output in session.get_outputs()}
    names = ["logits"] + [name for name in (EMBEDDING_OUTPUT, SENTENCE_OUTPUT, NEAREST_OUTPUT) if name in present]
    order = np.argsort([len(text) for text in texts], kind="stable")
    out: list[np.ndarray] = []
    truncated = np.zeros(len(texts), dtype=bool)
    for start in range(0, len(texts), batch_size):
        chosen = order[start : start + batch_size]
        encodings = tokenizer.encode_batch([texts[i] for i in chosen])
        truncated[chosen] = [bool(e.overflowing) for e in encodings]
        inputs = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        results = session.run(names, inputs)
        if not out:
            out = [np.zeros((len(texts), result.shape[1]), dtype=np.float32) for result in results]
        for target, result in zip(out, results, strict=True):
            target[chosen] = result
    if not out:
        raise ValueError("no texts to classify")
    found = dict(zip(names, out, strict=True))
    nearest = found.get(NEAREST_OUTPUT)
    return ModelOutputs(
        found["logits"], found.get(EMBEDDING_OUTPUT), truncated, found.get(SENTENCE_OUTPUT), None if nearest is None else nearest[:, 0]
    )


def classify_outputs(texts: Sequence[str], outputs: ModelOutputs, parts: ClassifierParts, top_k: int | None = None) -> list[dict]:
    """The classify contract per text: the ranking; whether the text lies outside every intent (`out_of_scope`: its
    `ood_score`, how far it lies from the intents and the training messages (`OutOfScopeDetector.scores`), passes the
    detector's threshold, most of its words are foreign to the desk's training messages, or it has no words at all);
    and whether only its beginning was read (`truncated`). A model trained without a detector scores nothing (null)."""
    results = ranking(parts.probabilities(texts, outputs), parts.card.labels, top_k)
    detector = parts.detector
    if detector is None:
        scores: list[float | None] = [None] * len(results)
        outside = [False] * len(results)
    elif outputs.embeddings is None:
        raise RegistryError("the classifier has an unknown-intent detector but its model gives no pooled embedding")
    else:
        distances = detector.scores(outputs.embeddings, outputs.sentence_embeddings, outputs.nearest_cosines)
        scores, outside = [float(d) for d in distances], [bool(flag) for flag in detector.out_of_scope(texts, distances)]
    return [
        result | {"out_of_scope": out or not _WORDS.search(text), "ood_score": score, "truncated": bool(cut)}
        for result, text, score, out, cut in zip(results, texts, scores, outside, outputs.truncated, strict=True)
    ]


class OnnxClassifier:
    """A classifier folder's ONNX variant, answering the classify contract: what `/classify` serves and what the
    portable MLflow model loads, so a notebook gets the bot's very answers."""

    def __init__(self, folder: Path, variant: str, threads: int) -> None:
        path = folder / ONNX_DIR / VARIANTS[variant]
        if not path.exists():
            raise RegistryError(f"{folder} has no {variant} ONNX export at {path}")
        self.parts = ClassifierParts.load(folder)
        self.card = self.parts.card
        self.session = onnx_session(path, threads)
        self.tokenizer = onnx_tokenizer(folder, self.card.max_length)
        outputs = {output.name for output in self.session.get_outputs()}
        if self.parts.reads_embeddings and EMBEDDING_OUTPUT not in outputs:
            raise RegistryError(f"{path} has no {EMBEDDING_OUTPUT} output, which the folder's detector and prototypes read")
        if self.parts.reads_sentence_embeddings and SENTENCE_OUTPUT not in outputs:
            raise RegistryError(
                f"{path} has no {SENTENCE_OUTPUT} output, which the folder's detector, sentence prototypes or neighbours read"
            )

    def classify(self, texts: Sequence[str], top_k: int | None = 10) -> list[dict]:
        if not texts:
            return []
        texts = list(texts)
        outputs = onnx_outputs(self.session, self.tokenizer, texts)
        return classify_outputs(texts, outputs, self.parts, top_k)
