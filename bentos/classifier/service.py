"""The intent classifier service: the registry's `champion`, answering the classify contract.

`POST /classify {"texts": [...]}` returns, per text, `{"intent", "confidence", "ranking": [...]}` with
calibrated confidences. Adaptive batching merges concurrent requests into one forward pass.
`bentoml serve bentos.classifier.service:ClassifierService` from the repository root.
"""

import bentoml
from bentoml.exceptions import InvalidArgument

from supportflow.settings import get_settings

MAX_TEXTS = 256


@bentoml.service(name="supportflow-classifier", traffic={"timeout": 30})
class ClassifierService:
    def __init__(self) -> None:
        from supportflow.serve_classifier import load_serving_classifier

        self.classifier = load_serving_classifier(get_settings())

    @bentoml.api(route="/classify", batchable=True, batch_dim=0, max_batch_size=64, max_latency_ms=2000)
    def classify(self, texts: list[str]) -> list[dict]:
        if len(texts) > MAX_TEXTS:
            raise InvalidArgument(f"at most {MAX_TEXTS} texts per request")
        return self.classifier.classify([text if isinstance(text, str) else str(text) for text in texts])

    @bentoml.api(route="/noop")
    def noop(self) -> dict:
        """A constant: the framework's own floor, measured beside /classify."""
        return {"ok": True}

    @bentoml.api(route="/model")
    def model(self) -> dict:
        return self.classifier.describe()
