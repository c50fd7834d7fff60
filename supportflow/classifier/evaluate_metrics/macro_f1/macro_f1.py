"""Macro-F1: every intent counts the same, so a rare intent the model ignores shows up."""

import datasets
import evaluate
from sklearn.metrics import f1_score


class MacroF1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Unweighted mean of per-label F1 over the labels that occur in references or predictions.",
            citation="",
            inputs_description="predictions and references: label ids",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions: list[int], references: list[int]) -> dict[str, float]:
        return {"macro_f1": float(f1_score(references, predictions, average="macro", zero_division=0))}
