"""The registered model as anyone loads it outside this repository: `mlflow.pyfunc.load_model("models:/<name>@champion")`
in an environment holding only the model's own requirements, answering exactly what `/classify` answers.

It is the served ONNX variant behind the very class `/classify` runs (`OnnxClassifier`), with the same card
(temperature, labels) and unknown-intent detector. It is logged from code (`portable_model.py`, nothing pickled),
and the few modules it imports travel with the model as MLflow `code_paths`, so it resolves inside the model, not
against a checkout; its requirements are those modules' own (mlflow, ONNX Runtime, tokenizers, numpy, pandas), pinned to the versions
training ran with, and never the training stack (torch, transformers).
"""

import shutil
from importlib.metadata import version
from pathlib import Path

from mlflow.pyfunc import PythonModel, PythonModelContext

from supportflow.classifier.artifacts import MODEL_ARTIFACT, VARIANTS
from supportflow.classifier.inference import OnnxClassifier

# Everything `PortableClassifier` imports from the project, relative to the repository root.
MODULES = (
    "supportflow/__init__.py",
    "supportflow/errors.py",
    "supportflow/classifier/__init__.py",
    "supportflow/classifier/artifacts.py",
    "supportflow/classifier/inference.py",
    "supportflow/classifier/lexical.py",
    "supportflow/classifier/neighbours.py",
    "supportflow/classifier/ood.py",
    "supportflow/classifier/portable.py",
    "supportflow/classifier/prototypes.py",
)
MODEL_CODE = Path(__file__).with_name("portable_model.py")  # what MLflow runs to build the model when it loads it
# What those modules import, plus cloudpickle, which reads the pickled model back.
REQUIREMENTS = ("mlflow", "onnxruntime", "tokenizers", "numpy", "pandas", "cloudpickle")
INPUT_EXAMPLE = ["hello, I have a question about my order", "can I change the details I gave you?"]
ROOT = Path(__file__).resolve().parents[2]


class PortableClassifier(PythonModel):
    """A list of texts in; per text the classify contract: intent, confidence, ranking, out_of_scope, ood_score.

    `model_config`: `variant` (the ONNX export production serves, recorded at logging) and `threads`."""

    def load_context(self, context: PythonModelContext) -> None:
        config = context.model_config or {}
        variant = str(config.get("variant", "int8"))
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} is not one of the model's ONNX exports ({', '.join(VARIANTS)})")
        self.classifier = OnnxClassifier(Path(context.artifacts[MODEL_ARTIFACT]), variant, int(config.get("threads", 1)))

    def predict(self, context: PythonModelContext, model_input: list[str], params: dict | None = None) -> list[dict]:
        return self.classifier.classify(list(model_input))


def pinned_requirements() -> list[str]:
    """The requirements at the versions installed here: those training and the tests ran the model with."""
    return [f"{name}=={version(name)}" for name in REQUIREMENTS]


def stage_code(folder: Path) -> Path:
    """A copy of only the modules the model imports, laid out as the `supportflow` package, for `code_paths`."""
    for module in MODULES:
        target = folder / module
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / module, target)
    return folder / "supportflow"
