"""Export the fine-tuned classifier to ONNX (its logits and pooled embedding), plus an int8 variant, and check both
against torch.

Serving picks the fastest variant whose top-1 accuracy on the test split stays within the
configured tolerance of torch's; the parity figures travel with the model so that choice is recorded.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from transformers import DistilBertForSequenceClassification

from supportflow.classifier.artifacts import ONNX_DIR, VARIANTS
from supportflow.classifier.inference import EMBEDDING_OUTPUT, OnnxClassifier
from supportflow.classifier.predict import pooled_embedding


class _LogitsAndEmbedding(torch.nn.Module):
    """The two outputs serving reads: the logits, and the pooled embedding the unknown-intent detector measures."""

    def __init__(self, model: DistilBertForSequenceClassification) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return output.logits, pooled_embedding(output.hidden_states)


@dataclass(frozen=True)
class VariantParity:
    variant: str
    accuracy: float
    torch_accuracy: float
    seconds_per_100: float

    @property
    def drop(self) -> float:
        return self.torch_accuracy - self.accuracy


def export_onnx(folder: Path) -> dict[str, Path]:
    """Write `<folder>/onnx/model.onnx` and its int8 dynamic-quantised twin; return both paths."""
    model = DistilBertForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    target = folder / ONNX_DIR
    target.mkdir(exist_ok=True)
    paths = {name: target / file for name, file in VARIANTS.items()}
    example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    with torch.inference_mode():
        torch.onnx.export(
            _LogitsAndEmbedding(model),
            example,
            str(paths["fp32"]),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits", EMBEDDING_OUTPUT],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "logits": {0: "batch"},
                EMBEDDING_OUTPUT: {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
    # Per-channel scales: on the quick model, a third of per-tensor int8's largest logit error (one text: 1.8 ms against 1.0).
    quantize_dynamic(str(paths["fp32"]), str(paths["int8"]), weight_type=QuantType.QInt8, per_channel=True)
    return paths


def check_parity(
    folder: Path, variants: Sequence[str], texts: Sequence[str], labels: np.ndarray, torch_accuracy: float, threads: int
) -> list[VariantParity]:
    """Top-1 accuracy and speed of each ONNX variant on the texts the torch model was scored on, through the class
    `/classify` serves (tokenised as serving tokenises, fused with the lexical reader as serving fuses)."""
    results = []
    for name in variants:
        classifier = OnnxClassifier(folder, name, threads)
        started = time.perf_counter()
        predicted = [result["intent"] for result in classifier.classify(texts, top_k=1)]
        seconds = time.perf_counter() - started
        accuracy = float(np.mean([intent == classifier.card.labels[label] for intent, label in zip(predicted, labels, strict=True)]))
        results.append(VariantParity(name, accuracy, torch_accuracy, 100 * seconds / max(len(texts), 1)))
    return results


def fastest_within(parities: list[VariantParity], tolerance: float) -> str:
    """The serving choice: the fastest ONNX variant whose accuracy drop is within tolerance, else torch."""
    keeping = [p for p in parities if p.drop <= tolerance]
    return min(keeping, key=lambda p: p.seconds_per_100).variant if keeping else "torch"
