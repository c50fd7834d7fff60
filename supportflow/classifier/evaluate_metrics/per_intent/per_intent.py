"""Per-intent precision, recall, F1 and support: which intents the model gets wrong, and how."""

import datasets
import evaluate
from sklearn.metrics import precision_recall_fscore_support


class PerIntent(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Precision, recall, F1 and support for each label id in `labels`.",
            citation="",
            inputs_description="predictions and references: label ids; labels: every label id to report",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions: list[int], references: list[int], labels: list[int] | None = None) -> dict[str, list]:
        labels = sorted(set(references) | set(predictions)) if labels is None else list(labels)
        precision, recall, f1, support = precision_recall_fscore_support(references, predictions, labels=labels, zero_division=0)
        return {
            "labels": labels,
            "precision": [float(v) for v in precision],
            "recall": [float(v) for v in recall],
            "f1": [float(v) for v in f1],
            "support": [int(v) for v in support],
        }
