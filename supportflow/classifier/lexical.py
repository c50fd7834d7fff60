"""The classifier's second reader: TF-IDF over a message's words and the letters inside them, and a linear model on it.

Why beside the fine-tuned encoder: the two err differently. The encoder generalises over paraphrases but smooths away
a rare word, a product name or a misspelling; n-grams keep them, and a linear model learns an intent from a handful of
examples, where the encoder's head barely moves for a rare intent. Its scores are added to the other readers' with a
weight fitted on validation (`fusion.py`; docs/classifier.md, "Three readers").

The features are word 1-2 grams (runs of two or more word characters, lowercased) and character 2-5 grams of each
whitespace-separated word padded with a space, each block weighted by sublinear TF-IDF and scaled to unit length:
the choice scikit-learn's TF-IDF peer in `bench/intent.py` measured best. They are computed here, in plain Python and
numpy, for training and serving alike, so the served scores are the trained ones by construction, and serving
imports neither scikit-learn nor scipy.
"""

import re
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from supportflow.classifier.artifacts import read_part

LEXICAL_FILE = "lexical.npz"
FORMAT = "tfidf-words-1-2-chars-2-5"
_TOKEN = re.compile(r"\w\w+")
_CHAR_SIZES = range(2, 6)
WORD_PREFIX, CHAR_PREFIX = "w ", "c"


def ngram_counts(text: str) -> Counter[str]:
    """A message's n-grams with their counts, each named with its block's prefix."""
    lowered = text.lower()
    words = _TOKEN.findall(lowered)
    counts = Counter(WORD_PREFIX + word for word in words)
    counts.update(f"{WORD_PREFIX}{first} {second}" for first, second in pairwise(words))
    for word in lowered.split():
        padded = f" {word} "
        for size in _CHAR_SIZES:
            counts.update(CHAR_PREFIX + padded[start : start + size] for start in range(len(padded) - size + 1))
    return counts


@dataclass(frozen=True)
class Vectoriser:
    """The vocabulary, its inverse document frequencies and which block each feature belongs to."""

    index: dict[str, int]
    idf: np.ndarray  # (features,)
    words: np.ndarray  # (features,) bool: a word n-gram, else a character n-gram

    def vector(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The message's non-zero features and their weights: sublinear TF times IDF, each block of unit length.
        A message with no known n-gram has none (its scores are the model's bias alone)."""
        known = [(self.index[gram], count) for gram, count in ngram_counts(text).items() if gram in self.index]
        if not known:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        indices = np.array([i for i, _ in known], dtype=np.int64)
        values = (1.0 + np.log([count for _, count in known])) * self.idf[indices]
        for block in (self.words[indices], ~self.words[indices]):
            norm = np.sqrt((values[block] ** 2).sum())
            if norm > 0:
                values[block] /= norm
        return indices, values.astype(np.float32)


@dataclass(frozen=True)
class LexicalModel:
    vectoriser: Vectoriser
    weights: np.ndarray  # (features, intents)
    bias: np.ndarray  # (intents,)

    def scores(self, texts: list[str]) -> np.ndarray:
        """Per message, the linear model's score for each intent (its logits)."""
        out = np.tile(self.bias.astype(np.float32), (len(texts), 1))
        for row, text in enumerate(texts):
            indices, values = self.vectoriser.vector(text)
            if len(indices):
                out[row] += values @ self.weights[indices]
        return out

    def save(self, folder: Path) -> None:
        grams = sorted(self.vectoriser.index, key=self.vectoriser.index.__getitem__)
        np.savez(
            folder / LEXICAL_FILE,
            grams=np.array(grams, dtype=str),
            idf=self.vectoriser.idf,
            words=self.vectoriser.words,
            weights=self.weights,
            bias=self.bias,
            format=FORMAT,
        )

    @classmethod
    def load(cls, folder: Path) -> "LexicalModel | None":
        """The folder's lexical model; None for a model trained before there was one (the encoder answers alone)."""
        stored = read_part(folder / LEXICAL_FILE, "format", FORMAT, "features")
        if stored is None:
            return None
        index = {str(gram): i for i, gram in enumerate(stored["grams"])}
        vectoriser = Vectoriser(index, stored["idf"].astype(np.float64), stored["words"].astype(bool))
        return cls(vectoriser, stored["weights"].astype(np.float32), stored["bias"].astype(np.float32))
