"""Score a classifier on a labelled split: the figures, the per-intent report and the two plots.

Metrics come from the project's local `evaluate` modules; plots are drawn with matplotlib's Agg
backend so they render on a machine without a display.
"""

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from supportflow.classifier.evaluate_metrics import load_metric

RELIABILITY_BINS = 15


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    macro_f1: float
    expected_calibration_error: float
    per_intent: pd.DataFrame  # intent, precision, recall, f1, support
    confusion: np.ndarray  # rows: true label id, columns: predicted label id

    def most_confused(self, labels: list[str], top: int = 10) -> pd.DataFrame:
        """The (true, predicted) pairs the model mixes up most often."""
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        pairs = [(labels[t], labels[p], int(off[t, p])) for t, p in zip(*np.nonzero(off), strict=True)]
        frame = pd.DataFrame(pairs, columns=["true", "predicted", "count"])
        return frame.sort_values(["count", "true", "predicted"], ascending=[False, True, True]).head(top).reset_index(drop=True)


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = RELIABILITY_BINS) -> list[tuple[float, float, int]]:
    """Per non-empty confidence bin: mean confidence, accuracy, count."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    which = np.clip(np.digitize(confidence, np.linspace(0.0, 1.0, bins + 1)[1:-1]), 0, bins - 1)
    return [
        (float(confidence[which == b].mean()), float(correct[which == b].mean()), int((which == b).sum()))
        for b in range(bins)
        if (which == b).any()
    ]


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = RELIABILITY_BINS) -> float:
    return float(sum(n * abs(acc - conf) for conf, acc, n in reliability_bins(probabilities, labels, bins)) / len(labels))


def evaluate_predictions(probabilities: np.ndarray, labels: np.ndarray, label_names: list[str]) -> Evaluation:
    labels = np.asarray(labels)
    predicted = probabilities.argmax(axis=1)
    ids = list(range(len(label_names)))
    accuracy = load_metric("accuracy").compute(predictions=predicted, references=labels)["accuracy"]
    macro_f1 = load_metric("macro_f1").compute(predictions=predicted, references=labels)["macro_f1"]
    report = load_metric("per_intent").compute(predictions=predicted, references=labels, labels=ids)
    per_intent = pd.DataFrame(
        {
            "intent": label_names,
            "precision": report["precision"],
            "recall": report["recall"],
            "f1": report["f1"],
            "support": report["support"],
        }
    )
    return Evaluation(
        accuracy=accuracy,
        macro_f1=macro_f1,
        expected_calibration_error=expected_calibration_error(probabilities, labels),
        per_intent=per_intent,
        confusion=confusion_matrix(labels, predicted, labels=ids),
    )


def plot_confusion_matrix(confusion: np.ndarray, label_names: list[str], path: Path) -> Path:
    size = max(6.0, len(label_names) * 0.22)
    figure, axes = plt.subplots(figsize=(size, size))
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(label_names)), label_names, rotation=90, fontsize=6)
    axes.set_yticks(range(len(label_names)), label_names, fontsize=6)
    axes.set_xlabel("predicted intent")
    axes.set_ylabel("true intent")
    axes.set_title("Confusion matrix (share of each true intent)")
    figure.colorbar(image, ax=axes, fraction=0.03)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_reliability(probabilities: np.ndarray, labels: np.ndarray, path: Path, bins: int = RELIABILITY_BINS) -> Path:
    centres, accuracy, counts = zip(*reliability_bins(probabilities, labels, bins), strict=True)
    figure, axes = plt.subplots(figsize=(5.5, 5))
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    axes.plot(centres, accuracy, marker="o", label="model")
    for x, y, n in zip(centres, accuracy, counts, strict=True):
        axes.annotate(str(n), (x, y), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
    ece = expected_calibration_error(probabilities, np.asarray(labels), bins)
    axes.set_title(f"Reliability diagram (ECE {ece:.3f})")
    axes.set_xlabel("confidence (calibrated)")
    axes.set_ylabel("accuracy")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.05)
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_risk_coverage(curves: dict[str, pd.DataFrame], threshold: float, target_precision: float, path: Path) -> Path:
    """Precision against coverage for each split, the target as a line and the served threshold as a point."""
    figure, axes = plt.subplots(figsize=(6, 5))
    for split, curve in curves.items():
        line = axes.plot(curve["coverage"], curve["precision"], label=split)[0]
        served = curve[curve["threshold"] >= threshold]
        if len(served):
            point = served.iloc[-1]
            axes.plot(point["coverage"], point["precision"], marker="o", color=line.get_color())
            axes.annotate(
                f"{point['coverage']:.1%} at {point['precision']:.1%}",
                (point["coverage"], point["precision"]),
                textcoords="offset points",
                xytext=(-10, -14),
                fontsize=7,
                ha="right",
            )
    axes.axhline(target_precision, linestyle="--", color="grey", label=f"target precision {target_precision:.0%}")
    axes.set_title(f"Risk-coverage (served threshold {threshold:.3f})")
    axes.set_xlabel("coverage (share of messages the bot answers)")
    axes.set_ylabel("precision of the answered")
    axes.set_xlim(0, 1.01)
    axes.legend(loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
