"""The registered model works outside the repository: in a fresh virtual environment holding only the model's own
requirements, `mlflow.pyfunc.load_model("models:/intent-classifier@champion")` answers exactly what `/classify` serves.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.classifier.conftest import BANKING77, TINY_INTENTS, build_tiny_classifier, classifier_settings

pytestmark = pytest.mark.slow  # a tiny fine-tuning and a fresh environment (~1-2 min)

UV = Path(sys.executable).with_name("uv")
LOAD = """
import importlib.util, json, sys
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
texts = json.loads(open(sys.argv[2]).read())
import supportflow
print(json.dumps({
    "predictions": model.predict(texts),
    "signature_inputs": model.metadata.get_input_schema().to_dict(),
    "supportflow_from": supportflow.__file__,
    "training_stack": [name for name in ("torch", "transformers", "pydantic_settings") if importlib.util.find_spec(name)],
}))
"""


def test_the_champion_loads_in_a_fresh_environment_and_answers_as_classify_does(tmp_path: Path, tiny_base: Path) -> None:
    import pandas as pd

    from supportflow.classifier.logged_run import log_training_run
    from supportflow.classifier.onnx_export import check_parity
    from supportflow.classifier.registry import register_and_gate
    from supportflow.classifier.served import load_serving_classifier
    from supportflow.settings import TrainingProfile, get_settings
    from supportflow.tracking import connect
    from tests.classifier.conftest import TINY_PROFILE

    with classifier_settings(tmp_path, tiny_base):
        settings = get_settings()
        built, splits = build_tiny_classifier(settings.models_dir / "classifier", tiny_base)  # as training names it
        texts = splits.test["text"].tolist()
        alarms = float(built.test_out_of_scope.mean())
        parities = check_parity(built.folder, ["fp32", "int8"], texts, built.test_labels, built.test.accuracy, 1, alarms)
        run_id, model_uri = log_training_run(built, TrainingProfile(**TINY_PROFILE), {}, parities, settings, "local")
        register_and_gate(connect(settings), settings, run_id, model_uri, "snap-tiny", built.test.macro_f1, lambda version: 0.0)
        champion = f"models:/{settings.registered_model_name}@champion"

        # What a data scientist would install: the model's own requirements, pinned; no torch, no transformers.
        requirements = Path(mlflow.pyfunc.get_model_dependencies(champion)).read_text().split()
        names = {line.split("==")[0] for line in requirements}
        assert {"mlflow", "onnxruntime", "tokenizers", "numpy", "pandas"} <= names
        assert all("==" in line for line in requirements) and not names & {"torch", "transformers"}

        others = pd.read_csv(BANKING77 / "test.csv")
        unknown = others[~others["category"].isin(TINY_INTENTS)]["text"].head(20).tolist()
        batch = texts[:40] + unknown + ["", "?!", "🙂", "a" * 5000]
        served = load_serving_classifier(settings).classify(batch)

        environment = tmp_path / "fresh"
        subprocess.run([str(UV), "venv", "-q", "-p", sys.executable, str(environment)], check=True, timeout=120)
        python = environment / "bin" / "python"
        install = subprocess.run(
            [str(UV), "pip", "install", "-q", "-p", str(python), *requirements], capture_output=True, text=True, timeout=900
        )
        assert install.returncode == 0, install.stderr[-3000:]
        (tmp_path / "texts.json").write_text(json.dumps(batch))
        clean = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
        clean["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
        done = subprocess.run(
            [str(python), "-c", LOAD, champion, str(tmp_path / "texts.json")],
            env=clean,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["training_stack"] == []
    assert not loaded["supportflow_from"].startswith(str(Path(__file__).resolve().parents[2]))  # the model's code, not the repo's
    assert loaded["signature_inputs"] == [{"type": "string", "required": True}]  # a list of texts in, as the input example shows
    # Same ONNX variant, card and detector, through the same code: the very figures /classify serves.
    assert loaded["predictions"] == served
    assert any(p["out_of_scope"] for p in loaded["predictions"]) and not all(p["out_of_scope"] for p in loaded["predictions"])
