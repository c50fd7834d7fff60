"""Out-of-fold readings: what a small desk's threshold is chosen on, instead of its validation split alone.

Why: the threshold's two promises are kept on the messages it is chosen on, and on a desk with a few hundred
tickets the validation split holds a few dozen. The readers' weights are fitted on those same messages and can fit
them perfectly (the weights run to their bounds), so every threshold seems to keep the promise there, and new
messages get several times the wrong answers promised (docs/classifier.md, "A small desk's threshold").
Here the training and validation messages are dealt into folds; for each fold an encoder is fine-tuned and the
readers fitted on the others, and the fold is read by them, so every message is read by a model that never saw
it: the desk's whole history to choose on, at the cost of one fine-tuning per fold, which is small on such a desk.
The served model is still the one trained on the training split, its readers refitted on training and validation.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import AutoTokenizer, DistilBertForSequenceClassification

from supportflow.classifier.fine_tune import fine_tune
from supportflow.classifier.fusion import FusionChoice, fit_lexical
from supportflow.classifier.inference import Readings
from supportflow.classifier.neighbours import fit_neighbours
from supportflow.classifier.predict import predict_outputs
from supportflow.classifier.prototypes import fit_prototypes
from supportflow.classifier.splits import LabelledSplits
from supportflow.ingest.tickets import wording_keys
from supportflow.settings import Settings, TrainingProfile


@dataclass(frozen=True)
class CrossFitChoice:
    """How the out-of-fold models are fine-tuned: the folds, and the threads and device of the training run."""

    folds: int
    threads: int = 1
    device: str = "cpu"

    @classmethod
    def of(cls, settings: Settings, examples: int) -> "CrossFitChoice | None":
        """For a desk with `examples` training and validation messages: None above the settings' size, where the
        validation split is large enough to choose on and the fine-tunings would cost the most."""
        if settings.cross_fit_folds < 2 or examples > settings.cross_fit_max_examples:
            return None
        return cls(settings.cross_fit_folds, settings.train_threads, settings.train_device)


@dataclass(frozen=True)
class OutOfFold:
    readings: Readings  # every training and validation message, read by the fold's model that never saw it
    labels: np.ndarray
    folds: int
    seconds: float  # the fine-tunings'


def fold_of(labels: np.ndarray, wordings: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each message's fold, dealt per intent in a seeded order, so every fold's training part keeps every intent
    with at least `folds` wordings, and an intent with fewer keeps all but one of them.

    Messages that say the same thing (`wordings`: `ingest.tickets.wording_keys`) are dealt as one, for the reason the
    snapshot's split deals them so (`validate.snapshot.deal_keys`): a message many customers send, read by a model
    trained on its copies, is counted right, and the threshold chosen on it promises what new messages will not get."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        groups, group_of = np.unique(wordings[members], return_inverse=True)
        dealt = np.empty(len(groups), dtype=np.int64)
        dealt[rng.permutation(len(groups))] = (np.arange(len(groups)) + rng.integers(folds)) % folds
        fold[members] = dealt[group_of]
    return fold


def out_of_fold_readings(
    splits: LabelledSplits,
    sentence_embeddings: np.ndarray,
    base_location: str,
    profile: TrainingProfile,
    fusion: FusionChoice,
    choice: CrossFitChoice,
) -> OutOfFold:
    """`sentence_embeddings`: the pretrained encoder's, of the training then the validation messages (no fold
    changes them)."""
    pool = pd.concat([splits.train, splits.validation], ignore_index=True)
    labels = np.array(splits.label_ids("train") + splits.label_ids("validation"))
    texts = pool["text"].tolist()
    n_labels = len(splits.labels)
    fold = fold_of(labels, wording_keys(pool["text"]), choice.folds, profile.seed)
    readings = {name: np.zeros((len(pool), n_labels), dtype=np.float64) for name in ("encoder", *fusion.readers)}
    seconds = 0.0
    for k in range(choice.folds):
        rest, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        if not len(held):
            continue
        part = LabelledSplits(pool.iloc[rest], pool.iloc[held], pool.iloc[held], splits.labels, splits.left_out)
        with tempfile.TemporaryDirectory(prefix="cross-fit-") as scratch:
            tuned = fine_tune(base_location, part, profile, choice.threads, Path(scratch), choice.device)
            model = DistilBertForSequenceClassification.from_pretrained(scratch)
            tokenizer = AutoTokenizer.from_pretrained(scratch)
            seen = predict_outputs(model, tokenizer, [texts[i] for i in rest], profile.max_length)
            unseen = predict_outputs(model, tokenizer, [texts[i] for i in held], profile.max_length)
        seconds += tuned.train_seconds
        assert seen.embeddings is not None and unseen.embeddings is not None
        readings["encoder"][held] = unseen.logits
        if "lexical" in readings:
            readings["lexical"][held] = fit_lexical([texts[i] for i in rest], labels[rest], n_labels).scores([texts[i] for i in held])
        if "prototypes" in readings:
            readings["prototypes"][held] = fit_prototypes(seen.embeddings, labels[rest], n_labels).scores(unseen.embeddings)
        if "sentence_prototypes" in readings:
            centres = fit_prototypes(sentence_embeddings[rest], labels[rest], n_labels)
            readings["sentence_prototypes"][held] = centres.scores(sentence_embeddings[held])
        if "sentence_neighbours" in readings:
            nearest = fit_neighbours(sentence_embeddings[rest], labels[rest], n_labels)
            readings["sentence_neighbours"][held] = nearest.scores(sentence_embeddings[held])
    return OutOfFold(Readings(**readings), labels, choice.folds, seconds)
