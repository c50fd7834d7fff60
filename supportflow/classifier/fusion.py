"""Training the lexical reader and weighing the readers against each other: the only place scikit-learn and scipy
meet the served model, so serving (`lexical.py`, `prototypes.py`, `inference.py`) needs neither.

The readers are combined by adding their scores, `encoder / temperature + lexical_weight * lexical + prototype_weight *
prototypes + sentence_prototype_weight * sentence_prototypes`, the numbers fitted together on the validation split by
minimising its negative log-likelihood.
That is temperature scaling with more inputs: the fused confidences are calibrated the way the encoder's alone were,
and a reader that adds nothing gets weight zero. The class balance's offsets are laid on top (`prior_offsets`).
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import minimize
from scipy.special import log_softmax

from supportflow.classifier.artifacts import READER_WEIGHTS, FusionWeights
from supportflow.classifier.inference import Readings
from supportflow.classifier.lexical import WORD_PREFIX, LexicalModel, Vectoriser, ngram_counts
from supportflow.settings import Settings

# A character n-gram seen in one training message only is mostly noise (a typo's fragment); a word pair seen once is
# still the clearest sign of a rare intent.
MIN_DOCUMENTS = {"word": 1, "char": 2}
# The inverse of the L2 penalty: the features are many and sparse, and a weak penalty let the peer fit the long tail.
INVERSE_REGULARISATION = 20.0
READERS = tuple(READER_WEIGHTS)  # the readers beside the fine-tuned head


@dataclass(frozen=True)
class FusionChoice:
    """Which readers stand beside the head, and the class balance laid on their sum (`SUPPORTFLOW_CLASS_BALANCE`,
    `SUPPORTFLOW_CLASSIFIER_READERS`): the defaults are what the benchmarks measured best; fewer readers are for
    comparisons (the head alone is the old classifier)."""

    class_balance: float = 1.0  # every intent equally likely before a message is read: see `prior_offsets`
    readers: tuple[str, ...] = READERS

    @classmethod
    def of(cls, settings: Settings) -> "FusionChoice":
        return cls(settings.class_balance, tuple(settings.classifier_readers))


DEFAULT_FUSION = FusionChoice()


def prior_offsets(label_ids: Sequence[int], n_labels: int, balance: float) -> np.ndarray:
    """Minus `balance` times each intent's log share of the training messages (logit adjustment, Menon et al., ICLR
    2021). A softmax trained on a desk's history learns how common each intent was, and an intent with five tickets
    beside ones with five hundred is then almost never its answer, however clearly a message asks for it. At balance
    1 every intent is equally likely before the message is read, which is what macro-F1 (the gate's measure) and a
    desk that wants every intent answered ask for; at 0 the history's frequencies stay, which favours accuracy on
    traffic shaped like the history. The lexical reader is balanced already (its classes are weighted)."""
    counts = np.bincount(np.asarray(label_ids, dtype=np.int64), minlength=n_labels).astype(np.float64)
    shares = np.maximum(counts, 1.0) / max(counts.sum(), 1.0)
    return -balance * np.log(shares)


def fit_lexical(texts: Sequence[str], label_ids: Sequence[int], n_labels: int) -> LexicalModel:
    """TF-IDF fitted on the training messages, then a multinomial logistic regression whose classes are weighted
    inversely to their frequency, so an intent with five examples is not drowned by one with five hundred."""
    from sklearn.linear_model import LogisticRegression  # here, so that reading `FusionChoice` from settings needs none

    counts = [ngram_counts(text) for text in texts]
    documents: Counter = _document_frequency(counts)
    grams = sorted(gram for gram, n in documents.items() if n >= MIN_DOCUMENTS["word" if gram.startswith(WORD_PREFIX) else "char"])
    index = {gram: i for i, gram in enumerate(grams)}
    idf = np.log((1 + len(counts)) / (1 + np.array([documents[gram] for gram in grams], dtype=np.float64))) + 1.0
    vectoriser = Vectoriser(index, idf, np.array([gram.startswith(WORD_PREFIX) for gram in grams], dtype=bool))
    features = feature_matrix(vectoriser, texts)
    labels = np.asarray(label_ids)
    present = np.unique(labels)
    model = LogisticRegression(C=INVERSE_REGULARISATION, max_iter=2000, class_weight="balanced").fit(features, labels)
    weights = np.zeros((len(grams), n_labels), dtype=np.float32)
    bias = np.full(n_labels, -1e4, dtype=np.float32)  # an intent with no training message is never the lexical answer
    weights[:, present] = model.coef_.T
    bias[present] = model.intercept_
    return LexicalModel(vectoriser, weights, bias)


def _document_frequency(counts: Sequence[Counter]) -> Counter:
    documents: Counter = Counter()
    for grams in counts:
        documents.update(grams.keys())
    return documents


def feature_matrix(vectoriser: Vectoriser, texts: Sequence[str]) -> sparse.csr_matrix:
    rows = [vectoriser.vector(text) for text in texts]
    indptr = np.cumsum([0] + [len(indices) for indices, _ in rows])
    indices = np.concatenate([indices for indices, _ in rows]) if rows else np.zeros(0, dtype=np.int64)
    values = np.concatenate([values for _, values in rows]) if rows else np.zeros(0, dtype=np.float32)
    return sparse.csr_matrix((values, indices, indptr), shape=(len(rows), len(vectoriser.index)))


def fit_fusion(readings: Readings, labels: np.ndarray) -> FusionWeights:
    """The encoder's temperature and the other readers' weights that make the validation split's fused confidences
    most likely: calibrated to the desk's history, on which the class balance's offsets are then laid (they are not
    fitted: validation has the history's frequencies, and its likelihood would fit them away). A reader that is absent
    gets weight 0; with neither, this is plain temperature scaling."""
    labels = np.asarray(labels)
    rows = np.arange(len(labels))
    others = readings.beside_head()

    def nll(parameters: np.ndarray) -> float:
        fused = readings.encoder * parameters[0] + sum(
            weight * reading for weight, reading in zip(parameters[1:], others.values(), strict=True)
        )
        return float(-log_softmax(fused, axis=1)[rows, labels].mean())

    start = np.ones(1 + len(others))
    result = minimize(nll, start, method="L-BFGS-B", bounds=[(0.05, 20.0)] + [(0.0, 50.0)] * len(others))
    shares = {READER_WEIGHTS[name]: float(weight) for name, weight in zip(others, result.x[1:], strict=True)}
    return FusionWeights(temperature=float(1.0 / result.x[0]), **shares)
