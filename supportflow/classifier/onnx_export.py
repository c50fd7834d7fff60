"""Export the fine-tuned classifier to ONNX (its logits and pooled embedding), plus an int8 variant, and check both
against torch.

Serving picks the fastest variant whose top-1 accuracy on the test split stays within the configured tolerance of
torch's, and whose unknown-intent detector hands off no more in-scope test messages than torch's does, within its own
tolerance; the parity figures travel with the model so that choice is recorded.

The second check is there because int8's error is small in the embedding but not in the detector's distance: the
detector whitens the embedding, so the directions where the training messages barely vary, which int8's noise fills as
much as any other, weigh most. Dynamic quantisation also scales activations per batch, so the same message lies at
another distance alone than in a batch. On a small or briefly trained encoder the served int8 model put a third of one
intent's own training messages out of scope while fp32 flagged none; on BANKING77's full model the two agree. So the
false alarms are counted as the bot asks, one message per request.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from transformers import DistilBertForSequenceClassification, PreTrainedModel

from supportflow.classifier.artifacts import ONNX_DIR, VARIANTS, ClassifierCard
from supportflow.classifier.inference import EMBEDDING_OUTPUT, NEAREST_OUTPUT, SENTENCE_OUTPUT, OnnxClassifier
from supportflow.classifier.ood import OutOfScopeDetector
from supportflow.classifier.predict import load_sentence_encoder, pooled_embedding, sentence_embedding

if TYPE_CHECKING:
    from supportflow.classifier.build import BuiltClassifier


class _ServedOutputs(torch.nn.Module):
    """What serving reads, from one run of one graph: the logits; the pooled embedding the unknown-intent detector and
    the prototypes measure, pooled as the folder's card says they were fitted; and, for a folder with one, the
    pretrained encoder's sentence embedding of the same tokens, which the detector measures too, with its cosine to
    the nearest of the detector's training messages.

    Why the neighbour search is in the graph: searched in numpy, it read the neighbours' float32 matrix (16 MB for
    BANKING77) on every request, the largest cost after the encoders; in the int8 variant the same product is
    quantised with the encoders' weights and reads a quarter of it (bench/results/serve_latency.json)."""

    def __init__(
        self,
        model: DistilBertForSequenceClassification,
        pooling: str,
        sentence_encoder: PreTrainedModel | None,
        neighbours: np.ndarray | None,
    ) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.sentence_encoder = sentence_encoder
        transposed = None if neighbours is None else torch.from_numpy(np.ascontiguousarray(neighbours.T, dtype=np.float32))
        self.register_buffer("neighbours", transposed)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        served = (output.logits, pooled_embedding(output.hidden_states, attention_mask, self.pooling))
        if self.sentence_encoder is None:
            return served
        sentence = sentence_embedding(self.sentence_encoder, input_ids, attention_mask)
        if self.neighbours is None:
            return (*served, sentence)
        unit = sentence / sentence.norm(dim=1, keepdim=True).clamp(min=float(np.finfo(np.float32).tiny))  # `unit_length`
        return (*served, sentence, (unit @ self.neighbours).amax(dim=1, keepdim=True))


@dataclass(frozen=True)
class VariantParity:
    variant: str
    accuracy: float
    torch_accuracy: float
    seconds_per_100: float
    out_of_scope_rate: float  # the in-scope test messages its detector flags, classified one per request
    torch_out_of_scope_rate: float  # the same, through torch in training

    @property
    def drop(self) -> float:
        return self.torch_accuracy - self.accuracy

    @property
    def alarm_rise(self) -> float:
        """How many more in-scope messages, as a share, the bot would hand off as unknown with this variant."""
        return self.out_of_scope_rate - self.torch_out_of_scope_rate


def export_onnx(folder: Path) -> dict[str, Path]:
    """Write `<folder>/onnx/model.onnx` and its int8 dynamic-quantised twin; return both paths. Run after the
    detector is saved: the graph carries its neighbours."""
    model = DistilBertForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    sentence_encoder = load_sentence_encoder(folder)
    detector = OutOfScopeDetector.load(folder)
    neighbours = None if detector is None or detector.neighbours is None else detector.neighbours.embeddings
    target = folder / ONNX_DIR
    target.mkdir(exist_ok=True)
    paths = {name: target / file for name, file in VARIANTS.items()}
    example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    outputs = ["logits", EMBEDDING_OUTPUT] + ([] if sentence_encoder is None else [SENTENCE_OUTPUT])
    outputs += [] if sentence_encoder is None or neighbours is None else [NEAREST_OUTPUT]
    with torch.inference_mode():
        torch.onnx.export(
            _ServedOutputs(model, ClassifierCard.load(folder).embedding_pooling, sentence_encoder, neighbours),
            example,
            str(paths["fp32"]),
            input_names=["input_ids", "attention_mask"],
            output_names=outputs,
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
            | {name: {0: "batch"} for name in outputs},
            opset_version=17,
            dynamo=False,
        )
    # Per-channel scales: on the quick model, a third of per-tensor int8's largest logit error (one text: 1.8 ms against 1.0).
    quantize_dynamic(str(paths["fp32"]), str(paths["int8"]), weight_type=QuantType.QInt8, per_channel=True)
    return paths


def check_parity(
    folder: Path,
    variants: Sequence[str],
    texts: Sequence[str],
    labels: np.ndarray,
    torch_accuracy: float,
    threads: int,
    torch_out_of_scope_rate: float,
) -> list[VariantParity]:
    """Top-1 accuracy and speed of each ONNX variant on the texts the torch model was scored on, through the class
    `/classify` serves (tokenised as serving tokenises, fused with the lexical reader as serving fuses); and the share
    of those in-scope texts its detector flags when each is sent alone, as the bot sends a customer's message."""
    results = []
    for name in variants:
        classifier = OnnxClassifier(folder, name, threads)
        started = time.perf_counter()
        predicted = [result["intent"] for result in classifier.classify(texts, top_k=1)]
        seconds = time.perf_counter() - started
        accuracy = float(np.mean([intent == classifier.card.labels[label] for intent, label in zip(predicted, labels, strict=True)]))
        alone = [classifier.classify([text], top_k=1)[0]["out_of_scope"] for text in texts] if classifier.parts.detector else []
        alarms = float(np.mean(alone)) if alone else 0.0
        results.append(VariantParity(name, accuracy, torch_accuracy, 100 * seconds / max(len(texts), 1), alarms, torch_out_of_scope_rate))
    return results


def export_and_check(built: "BuiltClassifier", test_texts: Sequence[str], threads: int) -> list[VariantParity]:
    """Export a built classifier and check each variant against the torch figures it was built with, on its test
    split's texts (in the order of `built.test_labels`): what training logs and the benchmarks report alike."""
    paths = export_onnx(built.folder)
    torch_alarms = float(built.test_out_of_scope.mean())
    return check_parity(built.folder, list(paths), test_texts, built.test_labels, built.test.accuracy, threads, torch_alarms)


def fastest_within(parities: list[VariantParity], tolerance: float, alarm_tolerance: float) -> str:
    """The serving choice: the fastest ONNX variant whose accuracy drop and rise in false unknown-intent alarms are
    both within their tolerances, else torch."""
    keeping = [p for p in parities if p.drop <= tolerance and p.alarm_rise <= alarm_tolerance]
    return min(keeping, key=lambda p: p.seconds_per_100).variant if keeping else "torch"


def onnx_stand_in(variant: str) -> str:
    """The ONNX variant that answers where `variant` was chosen: itself, or for torch the faithful fp32 export, since
    what reads ONNX alone (the portable model, the open-intent benchmark) has no torch."""
    return variant if variant in VARIANTS else "fp32"
