"""From a classifier's logits to the classify contract, and running its ONNX export: what serving shares with
training's checks.

numpy, ONNX Runtime and the `tokenizers` library only: serving an ONNX variant must not import torch, and
transformers' tokenizer classes import it (through their configuration module). The ids and masks are the same:
a classifier folder's `tokenizer.json` is the very tokenizer transformers wraps, given the same truncation and
padding here once instead of on every call.
"""

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from supportflow.errors import RegistryError


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def ranking(probabilities: np.ndarray, labels: Sequence[str], top_k: int | None = None) -> list[dict]:
    """Per text: `{"intent", "confidence", "ranking": [{"intent", "confidence"}, ...]}`, best first."""
    results = []
    for row in probabilities:
        order = np.argsort(-row)[: top_k or len(labels)]
        ranked = [{"intent": labels[i], "confidence": float(row[i])} for i in order]
        results.append({"intent": ranked[0]["intent"], "confidence": ranked[0]["confidence"], "ranking": ranked})
    return results


def onnx_tokenizer(folder: Path, max_length: int) -> Tokenizer:
    """The classifier folder's tokenizer, truncating to the length it was trained with and padding each batch to
    its longest text, as the transformers tokenizer is called in training."""
    path = folder / "tokenizer.json"
    if not path.exists():
        raise RegistryError(f"{folder} has no tokenizer.json (a fast tokenizer), which its ONNX variants are served with")
    tokenizer = Tokenizer.from_file(str(path))
    pad = json.loads((folder / "tokenizer_config.json").read_text()).get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    pad_id = None if pad is None else tokenizer.token_to_id(pad)
    if pad_id is None:
        raise RegistryError(f"the tokenizer in {folder} names no padding token its vocabulary holds")
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad)
    return tokenizer


def onnx_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session: ort.InferenceSession, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """Logits in input order; batches are built from length-sorted texts so padding stays small."""
    order = np.argsort([len(text) for text in texts], kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(texts), batch_size):
        chosen = order[start : start + batch_size]
        encodings = tokenizer.encode_batch([texts[i] for i in chosen])
        inputs = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        logits = session.run(["logits"], inputs)[0]
        if out is None:
            out = np.zeros((len(texts), logits.shape[1]), dtype=np.float32)
        out[chosen] = logits
    assert out is not None
    return out
