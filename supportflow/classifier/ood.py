"""The unknown-intent detector: how far a message lies from every intent the model learnt.

Fitted without a single out-of-scope message, since a desk has none labelled: each intent's centre and one shared
covariance of the encoder's pooled embedding (the last layer's token vectors averaged, `predict.pooled_embedding`) over
the training messages, then the Mahalanobis distance from a message to its nearest centre (Lee et al., NeurIPS 2018;
Podolskiy et al., AAAI 2021, for fine-tuned transformers on intent data). A message is out of scope when that
distance passes a threshold read off the in-scope validation messages alone (the `quantile` of their distances): by
construction about 1 - quantile of in-scope traffic is flagged, whatever the out-of-scope traffic looks like.

The embedding alone lets some unknown messages through: a question in another language than the desk's about a topic
the desk knows, whose loanwords and shared stems ("PIN", "Apple Pay", "transfer") carry it into an intent's region (a
full-profile BANKING77 model's Mahalanobis distance flags 70.2% of `bench/data/multilingual.csv` and would answer 9
of its 205 questions confidently, in English; with the pretrained encoder's distance beside it, below, 99.5% and 1).
Their words give them away: most never occur in the desk's training messages. So the detector also keeps the
training messages' vocabulary (`VocabularyCoverage`) and flags a message when the share of its words outside it
passes a validation quantile of its own (`vocabulary_quantile`). It knows no language: a French desk's vocabulary is
French, and English messages to it are the unfamiliar ones.

Fine-tuning also costs the encoder some of what it knew: it learns to tell the known intents apart, and a question
about something else can be pulled into a known intent's region, whichever way its embedding is pooled. The
pretrained encoder it started from, kept frozen beside it (the folder's `sentence_encoder`, run in the same ONNX
graph), still places such a question away from every training message. So a model trained now measures two
distances: the Mahalanobis distance in the fine-tuned space, and the cosine distance from the message to its nearest
training message in the pretrained one (`NearestNeighbours`; kNN-1, as Sun et al., ICML 2022, use for
out-of-distribution detection). Each is standardised by its mean and spread over the in-scope validation messages,
and the score is their average, with its threshold the validation quantile as before. On the open-intent
protocol's screening models the pair ranked unseen-intent messages above known ones more often than either alone
(docs/classifier.md, "The pretrained encoder's second opinion"). The ONNX export searches the neighbours inside its
graph (`inference.NEAREST_OUTPUT`; in the int8 variant quantised like the encoders' weights, a quarter of the bytes
to read per message); the search here serves torch and the exports made before.

numpy only: the portable pyfunc and the ONNX serving path load it without torch.
"""

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from supportflow.classifier.artifacts import read_part
from supportflow.classifier.prototypes import unit_length
from supportflow.errors import RegistryError

DETECTOR_FILE = "ood.npz"
DEFAULT_QUANTILE = 0.99
METHOD = "mahalanobis"
# Added to the covariance's eigenvalues, relative to their mean: a desk with fewer training messages than embedding
# dimensions has a singular covariance, whose inverse would make every new message look infinitely far.
RIDGE = 1e-3
# ood.npz's layout: 1 holds the Mahalanobis detector alone (no `version` key), 2 adds the vocabulary, 3 the nearest
# neighbours in the pretrained encoder's space.
VERSION = 3
# How many messages' distances to every training message are computed at once: a batch of 10,000 messages against
# 10,000 training messages would otherwise hold a 400 MB matrix.
_NEIGHBOUR_CHUNK = 512
# The most training messages the neighbour search keeps: each costs a 384-wide product per classified message, so a
# desk with 100,000 tickets would spend several milliseconds per request on it. Beyond the cap every intent keeps the
# same number of its messages (all of those with fewer), drawn with a fixed seed, so the rare intents keep theirs.
MAX_NEIGHBOURS = 20_000
# Scripts written without spaces between words, where each character counts as a word, as BERT's tokenizer treats
# Chinese characters: Thai, Lao, Myanmar, Khmer, Japanese kana, CJK ideographs (code point ranges, inclusive).
_UNSPACED = ((0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF))


def words(text: str) -> list[str]:
    """A text's words: runs of letters and the marks that combine with them (Devanagari's vowel signs and Arabic's
    vowel marks are marks, not letters), one character each in a script without spaces; digits (amounts, dates,
    order numbers) and punctuation say nothing about the language and separate words. Compatibility-normalised and
    case-folded, so that a full-width letter or a capital is the same word as in training."""
    found: list[str] = []
    current: list[str] = []
    for char in unicodedata.normalize("NFKC", text).casefold():
        if any(low <= ord(char) <= high for low, high in _UNSPACED):
            found.extend(["".join(current), char] if current else [char])
            current = []
        elif unicodedata.category(char)[0] in "LM":
            current.append(char)
        elif current:
            found.append("".join(current))
            current = []
    if current:
        found.append("".join(current))
    return found


@dataclass(frozen=True)
class VocabularyCoverage:
    """The words of the desk's training messages, and how large a share of a message's words may lie outside them."""

    vocabulary: frozenset[str]
    threshold: float  # a larger share of unfamiliar words is out of scope

    def unfamiliar(self, texts: Iterable[str]) -> np.ndarray:
        """Per text, the share of its words that no training message holds; 0 for a text without words (the
        wordless rule of the classify contract, not this one, flags those)."""
        shares = []
        for text in texts:
            found = words(text)
            shares.append(sum(word not in self.vocabulary for word in found) / len(found) if found else 0.0)
        return np.array(shares, dtype=np.float64)


def vocabulary_quantile(quantile: float) -> float:
    """The vocabulary check's validation quantile beside a distance check at `quantile`: half its false alarms. Each
    desk message it flags is handed off on top of those the distance flags, and the foreign messages it is for lie far
    above the stricter threshold (most of their words unfamiliar, against one in three to six for the desk's rarest
    phrasings of its own questions), so the pair flags about 1.5 x (1 - quantile) of in-scope traffic, not twice that."""
    return 1.0 - (1.0 - quantile) / 2


def fit_vocabulary(train_texts: Sequence[str], validation_texts: Sequence[str], quantile: float = DEFAULT_QUANTILE) -> VocabularyCoverage:
    """The vocabulary from the training messages; the threshold from the validation messages, which it is not built
    from, so new in-scope phrasings (a typo, a plural, a shop's name) set how many unfamiliar words are normal."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"the detector's quantile must lie strictly between 0 and 1, not {quantile}")
    if len(validation_texts) == 0:
        raise ValueError("the vocabulary check needs validation messages to choose its threshold on")
    vocabulary = frozenset(word for text in train_texts for word in words(text))
    if not vocabulary:
        raise ValueError("the training messages hold no words to build the vocabulary check from")
    shares = VocabularyCoverage(vocabulary, threshold=1.0).unfamiliar(validation_texts)
    return VocabularyCoverage(vocabulary, float(np.quantile(shares, quantile)))


def nearest_distances(neighbours: np.ndarray, sentence_embeddings: np.ndarray) -> np.ndarray:
    """Per message, 1 - the cosine to its nearest row of `neighbours` (unit length); in chunks, so memory stays
    bounded."""
    queries = unit_length(np.asarray(sentence_embeddings, dtype=np.float32))
    nearest = np.empty(len(queries), dtype=np.float64)
    for start in range(0, len(queries), _NEIGHBOUR_CHUNK):
        nearest[start : start + _NEIGHBOUR_CHUNK] = (queries[start : start + _NEIGHBOUR_CHUNK] @ neighbours.T).max(axis=1)
    return 1.0 - nearest


@dataclass(frozen=True)
class Standardised:
    """A score's centre and spread over the in-scope validation messages, so that two scores on different scales can
    be averaged."""

    mean: float
    scale: float

    @classmethod
    def fit(cls, values: np.ndarray) -> "Standardised":
        values = np.asarray(values, dtype=np.float64)
        return cls(float(values.mean()), max(float(values.std()), np.finfo(np.float32).eps))

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) - self.mean) / self.scale


@dataclass(frozen=True)
class NearestNeighbours:
    """The training messages in the pretrained encoder's space, and how the two distances are put on one scale."""

    embeddings: np.ndarray  # (training messages, dim), unit length, float16 values (as stored) held as float32
    mahalanobis: Standardised  # the fine-tuned space's distance, over the validation messages
    neighbour: Standardised  # this distance, over the validation messages

    def distances(self, sentence_embeddings: np.ndarray) -> np.ndarray:
        """Per message, 1 - the cosine to its nearest training message."""
        return nearest_distances(self.embeddings, sentence_embeddings)

    def average(self, mahalanobis: np.ndarray, neighbour: np.ndarray) -> np.ndarray:
        """The average of the two distances, each standardised."""
        return (self.mahalanobis(mahalanobis) + self.neighbour(neighbour)) / 2


@dataclass(frozen=True)
class OutOfScopeDetector:
    centres: np.ndarray  # (intents, dim): each intent's mean embedding, whitened
    whitening: np.ndarray  # (dim, dim): maps an embedding to where the shared covariance is the identity
    threshold: float  # a distance above it is out of scope
    quantile: float  # the share of in-scope validation messages within the threshold
    vocabulary: VocabularyCoverage | None = None  # None in a model stored before the vocabulary check (version 1)
    neighbours: NearestNeighbours | None = None  # None in a model stored before the pretrained encoder's (version 3)

    def out_of_scope(self, texts: Sequence[str], scores: np.ndarray) -> np.ndarray:
        """Per text, whether it lies outside every intent: its score (`scores`) passes the threshold, or it is written
        mostly in words the desk's training messages never use."""
        flagged = np.asarray(scores) > self.threshold
        if self.vocabulary is not None:
            flagged |= self.vocabulary.unfamiliar(texts) > self.vocabulary.threshold
        return flagged

    def mahalanobis(self, embeddings: np.ndarray) -> np.ndarray:
        """Per message, the Mahalanobis distance to the nearest intent's centre in the fine-tuned encoder's space."""
        whitened = np.asarray(embeddings, dtype=np.float64) @ self.whitening
        squared = (whitened**2).sum(axis=1, keepdims=True) - 2 * whitened @ self.centres.T + (self.centres**2).sum(axis=1)[np.newaxis, :]
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))

    def scores(
        self, embeddings: np.ndarray, sentence_embeddings: np.ndarray | None = None, nearest_cosines: np.ndarray | None = None
    ) -> np.ndarray:
        """Per message, what the threshold is compared with: the Mahalanobis distance, or, with the pretrained
        encoder's neighbours, the average of it and the neighbour distance, each standardised. The neighbour distance
        is 1 - `nearest_cosines` where the ONNX graph searched them (`inference.NEAREST_OUTPUT`), else searched here in
        `sentence_embeddings`, the pretrained encoder's (one of the two is then required)."""
        distances = self.mahalanobis(embeddings)
        if self.neighbours is None:
            return distances
        if nearest_cosines is not None:
            return self.neighbours.average(distances, 1.0 - np.asarray(nearest_cosines, dtype=np.float64))
        if sentence_embeddings is None:
            raise RegistryError("the unknown-intent detector reads the pretrained encoder's embedding, and none was given")
        return self.neighbours.average(distances, self.neighbours.distances(sentence_embeddings))

    def save(self, folder: Path) -> None:
        stored = {"centres": self.centres, "whitening": self.whitening, "threshold": self.threshold, "quantile": self.quantile}
        if self.neighbours is not None:
            neighbours = self.neighbours
            stored |= {
                "neighbours": neighbours.embeddings.astype(np.float16),  # half the size; fitted on these very values
                "standardisation": np.array(
                    [neighbours.mahalanobis.mean, neighbours.mahalanobis.scale, neighbours.neighbour.mean, neighbours.neighbour.scale]
                ),
            }
        if self.vocabulary is not None:
            # The words as a fixed-width unicode array, which np.load reads back without pickle.
            stored |= {
                "vocabulary": np.array(sorted(self.vocabulary.vocabulary), dtype=np.str_),
                "vocabulary_threshold": self.vocabulary.threshold,
            }
        np.savez(folder / DETECTOR_FILE, method=METHOD, version=VERSION, **stored)

    @classmethod
    def load(cls, folder: Path) -> "OutOfScopeDetector | None":
        """The folder's detector; None for a model trained before detectors were (it flags nothing). A version 1 file
        has no vocabulary, and a version 1 or 2 file no neighbours: its model flags as it did when it was trained."""
        path = folder / DETECTOR_FILE
        stored = read_part(path, "method", METHOD, "detector")
        if stored is None:
            return None
        version = int(stored["version"]) if "version" in stored else 1
        if version > VERSION:
            raise RegistryError(f"{path} is a version {version} detector; this version of supportflow reads up to {VERSION}")
        vocabulary = None
        if "vocabulary" in stored:
            vocabulary = VocabularyCoverage(frozenset(stored["vocabulary"].tolist()), float(stored["vocabulary_threshold"]))
        neighbours = None
        if "neighbours" in stored:
            means_and_scales = [float(value) for value in stored["standardisation"]]
            neighbours = NearestNeighbours(
                stored["neighbours"].astype(np.float32), Standardised(*means_and_scales[:2]), Standardised(*means_and_scales[2:])
            )
        return cls(stored["centres"], stored["whitening"], float(stored["threshold"]), float(stored["quantile"]), vocabulary, neighbours)


def neighbour_sample(labels: np.ndarray, cap: int = MAX_NEIGHBOURS, seed: int = 0) -> np.ndarray:
    """The training messages (indices, in order) the neighbour search keeps: all of them up to `cap`, else the same
    quota of each intent, the largest that fits."""
    labels = np.asarray(labels)
    if len(labels) <= cap:
        return np.arange(len(labels))
    _, counts = np.unique(labels, return_counts=True)
    quota = max(q for q in range(1, int(counts.max()) + 1) if np.minimum(counts, q).sum() <= cap) if counts.size <= cap else 1
    order = np.random.default_rng(seed).permutation(len(labels))
    kept: list[int] = []
    taken: dict[object, int] = {}
    for index in order:
        label = labels[index].item()
        if taken.get(label, 0) < quota:
            taken[label] = taken.get(label, 0) + 1
            kept.append(int(index))
    return np.sort(np.array(kept, dtype=np.int64))


def fit_detector(
    embeddings: np.ndarray,
    labels: np.ndarray,
    validation_embeddings: np.ndarray,
    quantile: float = DEFAULT_QUANTILE,
    vocabulary: VocabularyCoverage | None = None,
    sentence_embeddings: np.ndarray | None = None,
    validation_sentence_embeddings: np.ndarray | None = None,
) -> OutOfScopeDetector:
    """Centres and shared covariance from the training messages; the threshold from the validation messages, which the
    centres never saw (training messages sit closer to their centres than new in-scope ones do). `vocabulary`
    (`fit_vocabulary` on the same messages) is stored with it. With the pretrained encoder's embeddings of the same
    training and validation messages, the score is the standardised pair (`NearestNeighbours`), its scales and
    threshold read off validation too."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"the detector's quantile must lie strictly between 0 and 1, not {quantile}")
    if len(validation_embeddings) == 0:
        raise ValueError("the unknown-intent detector needs validation messages to choose its threshold on")
    if (sentence_embeddings is None) != (validation_sentence_embeddings is None):
        raise ValueError("the pretrained encoder's embeddings are needed for both the training and the validation messages")
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
    validation_distances = unthresholded.mahalanobis(validation_embeddings)
    neighbours = None
    if sentence_embeddings is not None and validation_sentence_embeddings is not None:
        # Rounded to float16 as stored, so that served distances are those the threshold was chosen on.
        kept = neighbour_sample(labels)
        stored = unit_length(np.asarray(sentence_embeddings, dtype=np.float32)[kept]).astype(np.float16).astype(np.float32)
        neighbour_distances = nearest_distances(stored, validation_sentence_embeddings)
        neighbours = NearestNeighbours(stored, Standardised.fit(validation_distances), Standardised.fit(neighbour_distances))
        validation_scores = neighbours.average(validation_distances, neighbour_distances)
    else:
        validation_scores = validation_distances
    threshold = float(np.quantile(validation_scores, quantile))
    return OutOfScopeDetector(unthresholded.centres, whitening, threshold, quantile, vocabulary, neighbours)
