"""The classifier's fifth reader: how close a message lies to each intent's nearest training message, in the
pretrained encoder's space.

Why: an intent's centre (`prototypes.py`) is one point for every way it is asked. A desk's intent is often asked in
two or three distinct ways ("my card hasn't come" beside "how long does delivery take"), and the centre of those sits
between them, near neither; a rare intent's centre is the mean of five messages that may each be a different way. The
nearest message keeps every way apart: a message's score for an intent is its cosine to that intent's closest
training message (a one-nearest-neighbour classifier), the same search the unknown-intent detector already makes
over every intent at once. Beside the centres, on a long-tail cut of BANKING77 and on the whole of it, it answered
more messages right than they did (docs/classifier.md, "The long tail").

numpy only, from the pretrained encoder's embedding serving computes anyway: one product per message with the
training messages, taken a block of messages at a time so a batch of thousands holds a bounded matrix.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from supportflow.classifier.artifacts import read_part
from supportflow.classifier.prototypes import unit_length

SENTENCE_NEIGHBOURS_FILE = "sentence_neighbours.npz"
METHOD = "max-cosine-per-intent"
NO_MESSAGE = -1.0  # an intent without a training message: the lowest cosine there is, so it is never this reader's answer
BLOCK = 256  # messages scored at once: a (256, training messages) matrix, whatever the batch


@dataclass(frozen=True)
class Neighbours:
    # (dim, training messages): each message a unit-length column, grouped by intent; float16 values held as float32.
    # Columns, so a message's product with all of them reads one contiguous block (a third faster than rows).
    columns: np.ndarray
    intents: np.ndarray  # (intents with messages,): their label ids, in the order of the groups
    starts: np.ndarray  # (intents with messages,): the column each group begins at
    n_labels: int

    def scores(self, sentence_embeddings: np.ndarray) -> np.ndarray:
        """Per message, its cosine to each intent's nearest training message."""
        messages = unit_length(np.asarray(sentence_embeddings, dtype=np.float32))
        out = np.full((len(messages), self.n_labels), NO_MESSAGE, dtype=np.float32)
        if not len(self.intents):
            return out
        for first in range(0, len(messages), BLOCK):
            cosines = messages[first : first + BLOCK] @ self.columns
            out[first : first + BLOCK, self.intents] = np.maximum.reduceat(cosines, self.starts, axis=1)
        return out

    def save(self, folder: Path) -> None:
        np.savez(
            folder / SENTENCE_NEIGHBOURS_FILE,
            columns=self.columns.astype(np.float16),
            intents=self.intents,
            starts=self.starts,
            n_labels=self.n_labels,
            method=METHOD,
        )

    @classmethod
    def load(cls, folder: Path) -> "Neighbours | None":
        """The folder's neighbours; None for a model trained before them (the other readers answer alone)."""
        stored = read_part(folder / SENTENCE_NEIGHBOURS_FILE, "method", METHOD, "neighbours")
        if stored is None:
            return None
        columns = np.ascontiguousarray(stored["columns"].astype(np.float32))
        return cls(columns, stored["intents"], stored["starts"], int(stored["n_labels"]))


def fit_neighbours(embeddings: np.ndarray, label_ids: np.ndarray, n_labels: int) -> Neighbours:
    """The messages grouped by intent, each scaled to length 1 and rounded to float16 as they are stored, so the
    scores the fusion is weighed on are the ones the folder serves."""
    label_ids = np.asarray(label_ids)
    order = np.argsort(label_ids, kind="stable")
    grouped = unit_length(np.asarray(embeddings, dtype=np.float32)[order]).astype(np.float16).astype(np.float32)
    intents, starts = np.unique(label_ids[order], return_index=True)
    return Neighbours(np.ascontiguousarray(grouped.T), intents.astype(np.int64), starts.astype(np.int64), n_labels)
