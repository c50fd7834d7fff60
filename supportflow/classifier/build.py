"""One classifier build after fine-tuning: fit the lexical reader, fuse and calibrate on validation, fit the
unknown-intent detector, score on test, write the classifier folder.

The Prefect flow and the benchmarks all reach `evaluate_classifier` through `supportflow.classifier.training`
(`build_as_configured`, `evaluate_as_configured`), so the figures in a benchmark are those of the model the pipeline
registers.
"""

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from transformers import AutoModel, AutoTokenizer, DistilBertForSequenceClassification

from supportflow.classifier.artifacts import EMBEDDING_POOLING, SENTENCE_ENCODER_DIR, ClassifierCard, FusionWeights
from supportflow.classifier.base_weights import BaseModelChoice
from supportflow.classifier.calibrate import (
    NO_WRONG_ANSWER_BUDGET,
    POINT_ESTIMATE,
    ThresholdChoice,
    at_threshold,
    choose_threshold,
    fit_temperature,
)
from supportflow.classifier.cross_fit import CrossFitChoice, out_of_fold_readings
from supportflow.classifier.evaluate import Evaluation, evaluate_predictions
from supportflow.classifier.fine_tune import FineTuned
from supportflow.classifier.fusion import DEFAULT_FUSION, FusionChoice, fit_fusion, fit_lexical, prior_offsets
from supportflow.classifier.inference import ModelOutputs, Readings, fused_softmax, softmax
from supportflow.classifier.lexical import LexicalModel
from supportflow.classifier.neighbours import Neighbours, fit_neighbours
from supportflow.classifier.ood import DEFAULT_QUANTILE, OutOfScopeDetector, fit_detector, fit_vocabulary, vocabulary_quantile
from supportflow.classifier.predict import predict_outputs
from supportflow.classifier.prototypes import PROTOTYPES_FILE, SENTENCE_PROTOTYPES_FILE, Prototypes, fit_prototypes
from supportflow.classifier.splits import LabelledSplits
from supportflow.settings import TrainingProfile


@dataclass(frozen=True)
class BuiltClassifier:
    folder: Path
    card: ClassifierCard
    train_seconds: float
    train_loss: float
    validation: Evaluation  # on the messages the threshold was chosen on: validation, or all read out of fold (cross_fit.py)
    test: Evaluation
    test_at_threshold: ThresholdChoice
    validation_probabilities: np.ndarray  # the same messages'
    validation_labels: np.ndarray
    test_probabilities: np.ndarray
    test_labels: np.ndarray
    detector: OutOfScopeDetector
    test_ood_scores: np.ndarray  # the detector's scores on the test split (all in scope)
    test_out_of_scope: np.ndarray  # the test messages the detector flags: its false alarms, by distance or by words
    fusion: FusionWeights
    encoder_test: Evaluation  # the fine-tuned head alone (temperature-scaled): what the other readers and the balance add


def evaluate_classifier(
    tuned: FineTuned,
    splits: LabelledSplits,
    base: BaseModelChoice,
    profile: TrainingProfile,
    target_precision: float,
    snapshot_id: str,
    ood_quantile: float = DEFAULT_QUANTILE,
    fusion: FusionChoice = DEFAULT_FUSION,
    max_wrong_answers: float = NO_WRONG_ANSWER_BUDGET,
    cross_fit: CrossFitChoice | None = None,
    precision_confidence: float = POINT_ESTIMATE,
) -> BuiltClassifier:
    """Fit the lexical reader and the prototypes on the training messages, fuse the readers and calibrate on
    validation, choose both thresholds there, score on test; write the card, the readers, the unknown-intent detector
    and the pretrained encoder it reads beside the fine-tuned one into the folder. The detector and the prototypes
    cost one more pass over the training messages (their embeddings), through both encoders. With `cross_fit`, the
    readers are weighed and both thresholds chosen on every training and validation message read out of fold
    instead (a small desk's: `cross_fit.py`)."""
    folder = tuned.model_dir
    model = DistilBertForSequenceClassification.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    sentence_encoder = AutoModel.from_pretrained(base.location).eval()  # the weights fine-tuning started from
    sentence_encoder.save_pretrained(folder / SENTENCE_ENCODER_DIR)
    validation_labels = np.array(splits.label_ids("validation"))
    test_labels = np.array(splits.label_ids("test"))
    train_texts, validation_texts, test_texts = (split["text"].tolist() for split in (splits.train, splits.validation, splits.test))
    train_labels = np.array(splits.label_ids("train"))
    train, validation, test = (
        predict_outputs(model, tokenizer, texts, profile.max_length, sentence_encoder=sentence_encoder)
        for texts in (train_texts, validation_texts, test_texts)
    )
    assert train.embeddings is not None and validation.embeddings is not None and test.embeddings is not None
    vocabulary = fit_vocabulary(train_texts, validation_texts, vocabulary_quantile(ood_quantile))
    detector = fit_detector(
        train.embeddings,
        train_labels,
        validation.embeddings,
        ood_quantile,
        vocabulary,
        train.sentence_embeddings,
        validation.sentence_embeddings,
    )
    detector.save(folder)

    # The readers are weighed, and the threshold chosen, on messages they have not seen (validation, or every message
    # read out of fold); then the two cheap ones are fitted again on training and validation (the head is not): an
    # intent with five tickets keeps one for validation, and its reader's answers are better from four examples than
    # from three.
    learnt = np.concatenate([train_labels, validation_labels])
    learnt_sentences = np.concatenate([_sentences(train), _sentences(validation)])  # the pretrained encoder's, in that order
    n_labels = len(splits.labels)
    offsets = tuple(float(offset) for offset in prior_offsets(learnt, n_labels, fusion.class_balance))
    if cross_fit is None:
        chosen_on = _validation_readings(train, validation, train_texts, validation_texts, train_labels, n_labels, fusion)
        chosen_labels = validation_labels
    else:
        out_of_fold = out_of_fold_readings(splits, learnt_sentences, base.location, profile, fusion, cross_fit)
        chosen_on, chosen_labels = out_of_fold.readings, out_of_fold.labels
    weights = replace(fit_fusion(chosen_on, chosen_labels), offsets=offsets)
    validation_probabilities = fused_softmax(chosen_on, weights)
    lexical: LexicalModel | None = None
    prototypes: Prototypes | None = None
    sentence_prototypes: Prototypes | None = None
    sentence_neighbours: Neighbours | None = None
    if "lexical" in fusion.readers:
        lexical = fit_lexical(train_texts + validation_texts, learnt, n_labels)
        lexical.save(folder)
    if "prototypes" in fusion.readers:
        prototypes = _refitted(train.embeddings, validation.embeddings, learnt, n_labels, folder, PROTOTYPES_FILE)
    if "sentence_prototypes" in fusion.readers:
        sentence_prototypes = _refitted(_sentences(train), _sentences(validation), learnt, n_labels, folder, SENTENCE_PROTOTYPES_FILE)
    if "sentence_neighbours" in fusion.readers:
        sentence_neighbours = fit_neighbours(learnt_sentences, learnt, n_labels)
        sentence_neighbours.save(folder)
    test_readings = Readings(
        test.logits,
        None if lexical is None else lexical.scores(test_texts),
        None if prototypes is None else prototypes.scores(test.embeddings),
        None if sentence_prototypes is None else sentence_prototypes.scores(_sentences(test)),
        None if sentence_neighbours is None else sentence_neighbours.scores(_sentences(test)),
    )
    test_probabilities = fused_softmax(test_readings, weights)
    head_alone = softmax(test.logits, fit_temperature(validation.logits, validation_labels))  # what the rest adds
    chosen = choose_threshold(validation_probabilities, chosen_labels, target_precision, max_wrong_answers, precision_confidence)
    card = ClassifierCard(
        labels=splits.labels,
        temperature=weights.temperature,
        threshold=chosen.threshold,
        coverage_at_threshold=chosen.coverage,
        precision_at_threshold=chosen.precision,
        target_precision=target_precision,
        max_wrong_answers=max_wrong_answers,
        precision_confidence=precision_confidence,
        embedding_pooling=EMBEDDING_POOLING,
        max_length=profile.max_length,
        base_model=base.name,
        snapshot_id=snapshot_id,
        lexical_weight=weights.lexical_weight,
        prototype_weight=weights.prototype_weight,
        sentence_prototype_weight=weights.sentence_prototype_weight,
        sentence_neighbour_weight=weights.sentence_neighbour_weight,
        logit_offsets=list(weights.offsets),
        cross_fit_folds=0 if cross_fit is None else cross_fit.folds,
    )
    card.save(folder)
    test_ood_scores = detector.scores(test.embeddings, test.sentence_embeddings)
    return BuiltClassifier(
        folder=folder,
        card=card,
        train_seconds=tuned.train_seconds,
        train_loss=tuned.train_loss,
        validation=evaluate_predictions(validation_probabilities, chosen_labels, splits.labels),
        test=evaluate_predictions(test_probabilities, test_labels, splits.labels),
        test_at_threshold=at_threshold(test_probabilities, test_labels, chosen.threshold),
        validation_probabilities=validation_probabilities,
        validation_labels=chosen_labels,
        test_probabilities=test_probabilities,
        test_labels=test_labels,
        detector=detector,
        test_ood_scores=test_ood_scores,
        test_out_of_scope=detector.out_of_scope(test_texts, test_ood_scores),
        fusion=weights,
        encoder_test=evaluate_predictions(head_alone, test_labels, splits.labels),
    )


def _validation_readings(
    train: ModelOutputs,
    validation: ModelOutputs,
    train_texts: list[str],
    validation_texts: list[str],
    train_labels: np.ndarray,
    n_labels: int,
    fusion: FusionChoice,
) -> Readings:
    """The readers fitted on the training messages alone, reading validation, which they have not seen: what they are
    weighed and the threshold chosen on. The served readers are fitted again on both afterwards (`_refitted`)."""
    assert train.embeddings is not None and validation.embeddings is not None
    return Readings(
        validation.logits,
        fit_lexical(train_texts, train_labels, n_labels).scores(validation_texts) if "lexical" in fusion.readers else None,
        fit_prototypes(train.embeddings, train_labels, n_labels).scores(validation.embeddings) if "prototypes" in fusion.readers else None,
        fit_prototypes(_sentences(train), train_labels, n_labels).scores(_sentences(validation))
        if "sentence_prototypes" in fusion.readers
        else None,
        fit_neighbours(_sentences(train), train_labels, n_labels).scores(_sentences(validation))
        if "sentence_neighbours" in fusion.readers
        else None,
    )


def _sentences(outputs: ModelOutputs) -> np.ndarray:
    """The pretrained encoder's embeddings, which `evaluate_classifier` always asks `predict_outputs` for."""
    assert outputs.sentence_embeddings is not None
    return outputs.sentence_embeddings


def _refitted(train: np.ndarray, validation: np.ndarray, learnt: np.ndarray, n_labels: int, folder: Path, file: str) -> Prototypes:
    """The centres again from the training and validation messages together, saved: what is served."""
    refitted = fit_prototypes(np.concatenate([train, validation]), learnt, n_labels)
    refitted.save(folder, file)
    return refitted
