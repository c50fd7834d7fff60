"""The intent classifier service, answering the classify contract.

`POST /classify {"texts": [...]}` returns, per text, `{"intent", "confidence", "ranking": [...]}` with
calibrated confidences. Adaptive batching merges concurrent requests into one forward pass.

Built as a bundle (`--arg model=<BentoML model tag>`), it serves the model the bundle carries; served
from source (`bentoml serve bentos.classifier.service:ClassifierService`), it asks the registry for the
production release's version (the champion before the first release). With `follow_production` on it
then follows the `production` alias, swapping the model in place when a release is promoted or rolled back.

Each request is bounded before it is batched: at most MAX_TEXTS texts of at most `max_message_chars` characters
(checked when the request is parsed, so BentoML's batching cannot split a large request past the check), in a
body of at most `max_request_bytes`; `/metrics` needs the internal token (supportflow/internal_auth.py).
"""

from pathlib import Path
from typing import Annotated

import bentoml
from bentoml.validators import ContentType
from pydantic import BaseModel, Field

from supportflow.classifier.batching import use_in_bentoml_dispatchers
from supportflow.internal_auth import InternalRoutes
from supportflow.limits import BodyLimit
from supportflow.services import bentoml_service_config, freeze_startup_objects
from supportflow.settings import get_settings

MAX_TEXTS = 256
Texts = Annotated[list[Annotated[str, Field(max_length=get_settings().max_message_chars)]], Field(max_length=MAX_TEXTS)]
# Declared, so BentoML need not derive the media type from the output's JSON schema on every response
# (measured with py-spy: a tenth of a served request's time).
JSON = ContentType("application/json")

# A burst must leave no wait behind for lone requests (supportflow/classifier/batching.py has the arithmetic), and
# while requests do queue, the dispatcher polls every 5 ms instead of 1: measured on 2 cores at 32 connections,
# 545 against 430 requests/s, the polling loop competing less with the forward passes. Both patch BentoML's
# internals, on the versions they were measured on only.
use_in_bentoml_dispatchers(poll_interval_s=0.005)


class BundleArguments(BaseModel):
    model: str | None = None  # the BentoML model tag a bundle carries


ARGUMENTS = bentoml.use_arguments(BundleArguments)


@bentoml.service(name="supportflow-classifier", traffic={"timeout": 30}, **bentoml_service_config(get_settings()))
class ClassifierService:
    if ARGUMENTS.model:
        bundled = bentoml.models.BentoModel(ARGUMENTS.model)

    def __init__(self) -> None:
        from supportflow.classifier.served import load_bundled_classifier, load_serving_classifier, load_version
        from supportflow.release.production import ProductionFollower

        self.settings = settings = get_settings()
        if ARGUMENTS.model:
            self.classifier = load_bundled_classifier(settings, Path(self.bundled.path), self.bundled.info.labels)
        else:
            self.classifier = load_serving_classifier(settings)
        if settings.follow_production:

            def swap(version: str, variant: str) -> None:
                self.classifier = load_version(settings, version, variant)  # one assignment: requests see old or new

            self.follower = ProductionFollower(settings, self.classifier.version, swap)
            self.follower.start()
        freeze_startup_objects()

    @bentoml.api(route="/classify", batchable=True, batch_dim=0, max_batch_size=64, max_latency_ms=2000)
    def classify(self, texts: Texts) -> Annotated[list[dict], JSON]:
        return self.classifier.classify(texts)

    @bentoml.api(route="/noop")
    def noop(self) -> Annotated[dict, JSON]:
        """A constant: the framework's own floor, measured beside /classify."""
        return {"ok": True}

    @bentoml.api(route="/model")
    def model(self) -> Annotated[dict, JSON]:
        return self.classifier.describe()


ClassifierService.add_asgi_middleware(BodyLimit)
ClassifierService.add_asgi_middleware(InternalRoutes)
