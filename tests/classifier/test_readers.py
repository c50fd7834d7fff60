"""The lexical reader, the prototypes, the neighbours and their fusion with the encoder: the served scores are the
fitted models', a rare intent is learnt from five examples, and the fused confidences weigh each reader by what it adds
on validation."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from supportflow.classifier.artifacts import ClassifierCard, FusionWeights
from supportflow.classifier.fusion import feature_matrix, fit_fusion, fit_lexical, prior_offsets
from supportflow.classifier.inference import ClassifierParts, ModelOutputs, Readings, fused_softmax
from supportflow.classifier.lexical import LEXICAL_FILE, LexicalModel, ngram_counts
from supportflow.classifier.neighbours import BLOCK, SENTENCE_NEIGHBOURS_FILE, Neighbours, fit_neighbours
from supportflow.classifier.prototypes import SENTENCE_PROTOTYPES_FILE, Prototypes, fit_prototypes
from supportflow.errors import RegistryError
from tests.classifier.conftest import tiny_rows

FREQUENT = ["card_arrival", "exchange_rate", "atm_support"]
RARE = "age_limit"


def _desk(rare_examples: int) -> tuple[list[str], list[int], list[str], list[int], list[str]]:
    """Three frequent intents with all their BANKING77 rows, one cut to `rare_examples`; the rest of it is held out."""
    rows = tiny_rows()
    labels = [*FREQUENT, RARE]
    train = rows[rows["category"].isin(FREQUENT)].groupby("category").head(150)
    rare = rows[rows["category"] == RARE]
    train = pd.concat([train, rare.head(rare_examples)])
    held_out = rows.drop(index=train.index)
    held_out = held_out[held_out["category"].isin(labels)]
    return (
        train["text"].tolist(),
        [labels.index(c) for c in train["category"]],
        held_out["text"].tolist(),
        [labels.index(c) for c in held_out["category"]],
        labels,
    )


def test_the_ngrams_are_words_word_pairs_and_letters_inside_words() -> None:
    counts = ngram_counts("Card, card ARRIVED")
    assert counts["w card"] == 2 and counts["w card card"] == 1 and counts["w card arrived"] == 1
    assert counts["c ca"] == 2 and counts["cd, "] == 1  # a word's letters with the space around it, punctuation kept
    assert not any(gram.startswith("c") and "  " in gram for gram in counts)  # never across two words


def test_the_served_scores_are_the_fitted_regressions_and_survive_the_folder(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    texts, labels, held_out, _, names = _desk(rare_examples=20)
    model = fit_lexical(texts, labels, len(names))
    features = feature_matrix(model.vectoriser, held_out)
    reference = LogisticRegression(C=20.0, max_iter=2000, class_weight="balanced").fit(feature_matrix(model.vectoriser, texts), labels)
    assert np.allclose(model.scores(held_out), reference.decision_function(features), atol=1e-3)
    model.save(tmp_path)
    loaded = LexicalModel.load(tmp_path)
    assert loaded is not None and np.allclose(loaded.scores(held_out), model.scores(held_out), atol=1e-6)


def test_an_intent_with_five_examples_is_learnt_beside_ones_with_a_hundred_and_fifty() -> None:
    texts, labels, held_out, truth, names = _desk(rare_examples=5)
    predicted = fit_lexical(texts, labels, len(names)).scores(held_out).argmax(axis=1)
    rare = np.array(truth) == names.index(RARE)
    assert rare.sum() >= 20
    assert (predicted[rare] == names.index(RARE)).mean() >= 0.6  # its held-out messages, never seen in training
    assert (predicted[~rare] == np.array(truth)[~rare]).mean() >= 0.9


def test_an_intent_without_training_messages_is_never_the_lexical_answer_and_unknown_words_score_the_bias() -> None:
    texts, labels, _, _, names = _desk(rare_examples=5)
    model = fit_lexical(texts, labels, len(names) + 1)  # a fifth intent, with no message
    scores = model.scores(["how old do you have to be to open an account", "zzqx", ""])
    assert (scores.argmax(axis=1) != len(names)).all()
    assert np.allclose(scores[1], model.bias) and np.allclose(scores[2], model.bias)


def test_a_lexical_file_of_another_format_is_refused_by_name(tmp_path: Path) -> None:
    np.savez(tmp_path / LEXICAL_FILE, format="bag-of-words-v0")
    with pytest.raises(RegistryError, match="bag-of-words-v0"):
        LexicalModel.load(tmp_path)
    assert LexicalModel.load(tmp_path / "elsewhere") is None  # a folder trained before the reader: the encoder alone


def test_the_fusion_weighs_each_reader_by_what_it_adds_on_validation() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 2000)
    truth = np.eye(5)[labels]
    encoder = 3.0 * truth + rng.normal(0, 1.5, (2000, 5))  # informative, noisy
    informative = 3.0 * truth + rng.normal(0, 1.5, (2000, 5))  # as good, with its own noise
    noise = rng.normal(0, 1.5, (2000, 5))
    both = fit_fusion(Readings(encoder, lexical=informative, prototypes=noise), labels)
    assert both.lexical_weight > 0.5 and both.prototype_weight < 0.1 and not both.offsets
    swapped = fit_fusion(Readings(encoder, lexical=noise, prototypes=informative), labels)
    assert swapped.prototype_weight > 0.5 and swapped.lexical_weight < 0.1
    third = fit_fusion(Readings(encoder, lexical=noise, prototypes=noise, sentence_prototypes=informative), labels)
    assert third.sentence_prototype_weight > 0.5 and max(third.lexical_weight, third.prototype_weight) < 0.1
    fourth = fit_fusion(Readings(encoder, lexical=noise, sentence_prototypes=noise, sentence_neighbours=informative), labels)
    assert fourth.sentence_neighbour_weight > 0.5 and max(fourth.lexical_weight, fourth.sentence_prototype_weight) < 0.1
    alone = fit_fusion(Readings(encoder), labels)
    assert alone.lexical_weight == alone.prototype_weight == alone.sentence_prototype_weight == alone.sentence_neighbour_weight == 0.0
    accuracy = lambda p: (p.argmax(axis=1) == labels).mean()  # noqa: E731
    fused = fused_softmax(Readings(encoder, lexical=informative, prototypes=noise), both)
    assert accuracy(fused) > accuracy(fused_softmax(Readings(encoder), alone)) + 0.03


def test_the_class_balance_lifts_a_rare_intent_the_history_buried_and_zero_keeps_the_history() -> None:
    # An encoder that learnt the history's frequencies: intent 2 had 5 tickets among 1,005, and its messages score
    # just below the common intents' prior; with the balance, a message that reads like it is answered with it.
    counts = [500, 500, 5]
    labels = np.repeat(np.arange(3), counts)
    offsets = prior_offsets(labels, 3, balance=1.0)
    assert offsets[2] - offsets[0] == pytest.approx(np.log(100), rel=1e-6)
    assert np.allclose(prior_offsets(labels, 3, balance=0.0), 0.0)
    rare_message = np.log([[0.4, 0.3, 0.3]])  # the history's prior pulls it to intent 0; the text points at intent 2
    assert fused_softmax(Readings(rare_message), FusionWeights(1.0, offsets=tuple(offsets))).argmax() == 2
    assert fused_softmax(Readings(rare_message), FusionWeights(1.0)).argmax() == 0
    assert np.isfinite(prior_offsets([0, 0, 1], 4, balance=1.0)).all()  # an intent with no ticket: finite, never -inf


def test_prototypes_score_the_cosine_to_each_intents_centre_and_survive_the_folder(tmp_path: Path) -> None:
    embeddings = np.array([[1.0, 0.0], [3.0, 0.2], [0.0, 2.0], [0.1, 1.0]])
    prototypes = fit_prototypes(embeddings, np.array([0, 0, 2, 2]), n_labels=3)  # intent 1 has no message
    scores = prototypes.scores(np.array([[2.0, 0.1], [0.0, 5.0]]))
    assert scores.shape == (2, 3) and (scores.argmax(axis=1) == [0, 2]).all()
    assert np.allclose(scores[:, 1], 0.0)  # a centre with no message scores nothing, never NaN
    assert scores.max() <= 1.0 + 1e-6
    prototypes.save(tmp_path)
    loaded = Prototypes.load(tmp_path)
    assert loaded is not None and np.allclose(loaded.scores(embeddings), prototypes.scores(embeddings))
    assert Prototypes.load(tmp_path / "elsewhere") is None
    assert Prototypes.load(tmp_path, SENTENCE_PROTOTYPES_FILE) is None  # the second set has its own file


def test_the_sentence_prototypes_read_the_pretrained_encoders_embedding_and_refuse_a_model_without_it() -> None:
    # The fine-tuned space says nothing of these messages (one point); the pretrained one separates them.
    labels = ["first", "second"]
    card = ClassifierCard(labels, 1.0, 0.5, 1.0, 1.0, 0.97, 16, "base", "snapshot", sentence_prototype_weight=10.0)
    parts = ClassifierParts(card, None, None, None, fit_prototypes(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), 2))
    logits = np.zeros((2, 2), dtype=np.float32)
    sentences = np.array([[0.0, 3.0], [2.0, 0.1]], dtype=np.float32)
    outputs = ModelOutputs(logits, np.ones((2, 4), dtype=np.float32), np.zeros(2, dtype=bool), sentences)
    assert parts.reads_sentence_embeddings and not parts.reads_embeddings
    assert (parts.probabilities(["a", "b"], outputs).argmax(axis=1) == [1, 0]).all()
    unweighted = ClassifierParts(replace(card, sentence_prototype_weight=0.0), None, None, None, parts.sentence_prototypes)
    assert not unweighted.reads_sentence_embeddings  # a reader the fit gave no weight is not asked for its input
    assert np.allclose(unweighted.probabilities(["a", "b"], outputs), 0.5)
    with pytest.raises(RegistryError, match="no sentence embedding"):
        parts.probabilities(["a", "b"], replace(outputs, sentence_embeddings=None))


def test_neighbours_score_the_cosine_to_each_intents_nearest_message_where_its_centre_lies_between_them(tmp_path: Path) -> None:
    # Intent 0 is asked two ways (the x and the y axis); intent 2 once, half-way between them. Intent 1 has no message.
    embeddings = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 0.0], [0.7, 0.7, 0.1]])
    labels = np.array([0, 0, 0, 2])
    neighbours = fit_neighbours(embeddings, labels, n_labels=3)
    message = np.array([[0.1, 2.0, 0.0]])  # the second way of asking intent 0
    scores = neighbours.scores(message)
    assert scores.shape == (1, 3) and scores.argmax() == 0
    assert scores[0, 0] == pytest.approx(2.0 / np.hypot(0.1, 2.0), abs=1e-3) and scores[0, 1] == -1.0
    assert fit_prototypes(embeddings, labels, 3).scores(message).argmax() == 2  # the centre of the two ways lies nearer intent 2
    neighbours.save(tmp_path)
    loaded = Neighbours.load(tmp_path)
    assert loaded is not None and np.array_equal(loaded.scores(message), scores)  # stored as fitted: float16 values
    assert Neighbours.load(tmp_path / "elsewhere") is None
    np.savez(tmp_path / SENTENCE_NEIGHBOURS_FILE, method="mean-of-three-nearest")
    with pytest.raises(RegistryError, match="mean-of-three-nearest"):
        Neighbours.load(tmp_path)


def test_a_batch_larger_than_a_block_scores_as_its_messages_do_one_by_one() -> None:
    rng = np.random.default_rng(1)
    neighbours = fit_neighbours(rng.normal(size=(60, 8)), rng.integers(0, 5, 60), n_labels=6)
    batch = rng.normal(size=(BLOCK * 2 + 3, 8))
    scores = neighbours.scores(batch)
    assert np.allclose(scores[[0, BLOCK, 2 * BLOCK + 2]], np.vstack([neighbours.scores(batch[[i]]) for i in (0, BLOCK, 2 * BLOCK + 2)]))
    assert scores.max() <= 1.0 + 1e-3 and np.isfinite(scores).all()


def test_the_sentence_neighbours_are_read_only_when_weighted_and_need_the_sentence_embedding() -> None:
    labels = ["first", "second"]
    card = ClassifierCard(labels, 1.0, 0.5, 1.0, 1.0, 0.97, 16, "base", "snapshot", sentence_neighbour_weight=10.0)
    parts = ClassifierParts(card, None, None, None, None, fit_neighbours(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), 2))
    outputs = ModelOutputs(
        np.zeros((2, 2), dtype=np.float32),
        np.ones((2, 4), dtype=np.float32),
        np.zeros(2, dtype=bool),
        np.array([[0.0, 3.0], [2.0, 0.1]], dtype=np.float32),
    )
    assert parts.reads_sentence_embeddings and not parts.reads_embeddings
    assert (parts.probabilities(["a", "b"], outputs).argmax(axis=1) == [1, 0]).all()
    unweighted = replace(parts, card=replace(card, sentence_neighbour_weight=0.0))
    assert not unweighted.reads_sentence_embeddings
    with pytest.raises(RegistryError, match="no sentence embedding"):
        parts.probabilities(["a", "b"], replace(outputs, sentence_embeddings=None))
