"""Heavy stacks load only where they are used. Reading a snapshot does not load Great Expectations (training, the
dialogue build and `evaluate` read the lake's splits and the contract's rules; only checking a batch needs GX), and
importing the flows does not load the training stack (a resumed pipeline trains nothing)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def loaded(imports: str, modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a fresh interpreter holds after `import <imports>`: what this process imported says nothing."""
    probe = f"import sys\nimport {imports}\nprint([m for m in {modules!r} if m in sys.modules])\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def test_the_snapshot_and_the_contract_s_rules_load_without_great_expectations() -> None:
    assert loaded("supportflow.validate.contracts, supportflow.validate.snapshot", ("great_expectations",)) == []


def test_the_pipeline_and_the_registry_load_without_the_training_stack() -> None:
    """A resumed pipeline, `rollback` and Prefect's workers import the flows and the registry; only a step that trains,
    exports or logs a model needs torch, transformers, scikit-learn and matplotlib, and it imports them itself."""
    heavy = ("torch", "transformers", "sklearn", "matplotlib", "datasets")
    assert loaded("flows.pipeline, supportflow.classifier.registry", heavy) == []
