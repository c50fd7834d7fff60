"""The file MLflow logs as the registered model's code (models from code): loading the model runs it, so nothing of
the model is pickled and nothing refers back to a checkout; `PortableClassifier` comes from the modules logged beside
it as `code_paths` (supportflow/classifier/portable.py)."""

from mlflow.models import set_model

from supportflow.classifier.portable import PortableClassifier

set_model(PortableClassifier())
