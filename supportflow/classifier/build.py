"""One classifier build: fine-tune, calibrate on validation, fit the unknown-intent detector, score on test, write
the classifier folder.

The Prefect flow and the benchmark both call `build_classifier`, so the figures in the benchmark are
those of the model the pipeline registers.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer, DistilBertForSequenceClassification

from supportflow.classifier.artifacts import ClassifierCard
from supportflow.classifier.base_weights import BaseModelChoice
from supportflow.classifier.calibrate import ThresholdChoice, at_threshold, choose_threshold, fit_temperature
from supportflow.classifier.evaluate import Evaluation, evaluate_predictions
from supportflow.classifier.fine_tune import FineTuned, LabelledSplits, fine_tune
from supportflow.classifier.inference import softmax
from supportflow.classifier.ood import DEFAULT_QUANTILE, OutOfScopeDetector, fit_detector, fit_vocabulary, vocabulary_quantile
from supportflow.classifier.predict import predict_outputs
from supportflow.settings import TrainingProfile


@dataclass(frozen=True)
class BuiltClassifier:
    folder: Path
    card: ClassifierCard
    train_seconds: float
    train_loss: float
    validation: Evaluation
    test: Evaluation
    test_at_threshold: ThresholdChoice
    validation_probabilities: np.ndarray
    validation_labels: np.ndarray
    test_probabilities: np.ndarray
    test_labels: np.ndarray
    detector: OutOfScopeDetector
    test_ood_scores: np.ndarray  # the detector's distances on the test split (all in scope)
    test_out_of_scope: np.ndarray  # the test messages the detector flags: its false alarms, by distance or by words


def build_classifier(
    splits: LabelledSplits,
    base: BaseModelChoice,
    profile: TrainingProfile,
    threads: int,
    target_precision: float,
    folder: Path,
    snapshot_id: str,
    ood_quantile: float = DEFAULT_QUANTILE,
) -> BuiltClassifier:
    tuned = fine_tune(base.location, splits, profile, threads, folder)
    return evaluate_classifier(tuned, splits, base, profile, target_precision, snapshot_id, ood_quantile)


def evaluate_classifier(
    tuned: FineTuned,
    splits: LabelledSplits,
    base: BaseModelChoice,
    profile: TrainingProfile,
    target_precision: float,
    snapshot_id: str,
    ood_quantile: float = DEFAULT_QUANTILE,
) -> BuiltClassifier:
    """Calibrate on validation, choose both thresholds there, score on test; write the card and the unknown-intent
    detector into the folder. The detector costs one more pass over the training messages (their embeddings)."""
    folder = tuned.model_dir
    model = DistilBertForSequenceClassification.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    validation_labels = np.array(splits.label_ids("validation"))
    test_labels = np.array(splits.label_ids("test"))
    train = predict_outputs(model, tokenizer, splits.train["text"].tolist(), profile.max_length)
    validation = predict_outputs(model, tokenizer, splits.validation["text"].tolist(), profile.max_length)
    test = predict_outputs(model, tokenizer, splits.test["text"].tolist(), profile.max_length)
    assert train.embeddings is not None and validation.embeddings is not None and test.embeddings is not None
    vocabulary = fit_vocabulary(splits.train["text"].tolist(), splits.validation["text"].tolist(), vocabulary_quantile(ood_quantile))
    detector = fit_detector(train.embeddings, np.array(splits.label_ids("train")), validation.embeddings, ood_quantile, vocabulary)
    detector.save(folder)

    temperature = fit_temperature(validation.logits, validation_labels)
    validation_probabilities = softmax(validation.logits, temperature)
    test_probabilities = softmax(test.logits, temperature)
    chosen = choose_threshold(validation_probabilities, validation_labels, target_precision)
    card = ClassifierCard(
        labels=splits.labels,
        temperature=temperature,
        threshold=chosen.threshold,
        coverage_at_threshold=chosen.coverage,
        precision_at_threshold=chosen.precision,
        target_precision=target_precision,
        max_length=profile.max_length,
        base_model=base.name,
        snapshot_id=snapshot_id,
    )
    card.save(folder)
    test_ood_scores = detector.scores(test.embeddings)
    return BuiltClassifier(
        folder=folder,
        card=card,
        train_seconds=tuned.train_seconds,
        train_loss=tuned.train_loss,
        validation=evaluate_predictions(validation_probabilities, validation_labels, splits.labels),
        test=evaluate_predictions(test_probabilities, test_labels, splits.labels),
        test_at_threshold=at_threshold(test_probabilities, test_labels, chosen.threshold),
        validation_probabilities=validation_probabilities,
        validation_labels=validation_labels,
        test_probabilities=test_probabilities,
        test_labels=test_labels,
        detector=detector,
        test_ood_scores=test_ood_scores,
        test_out_of_scope=detector.out_of_scope(splits.test["text"].tolist(), test_ood_scores),
    )
