from tests.classifier.conftest import tiny_base  # noqa: F401 - the tiny DistilBERT fixture, shared
