"""The served processes import serving code only, and the library never imports the flows that call it.

Each BentoML worker imports its service module and, at start-up, the modules its `__init__` needs: whatever
those pull in is paid for in start-up time and resident memory on every worker, and in bugs when a training
module's import side effects reach a served process. Each service is imported in a fresh interpreter, as
`bentoml serve` does.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.service_imports import SERVICES

ROOT = Path(__file__).resolve().parents[2]

# What no served process may load, and why it is not needed there:
NOT_SERVED = {
    "transformers.trainer": "fine-tuning only (classifier/fine_tune.py)",
    "accelerate": "the Trainer's dependency",
    "datasets": "the Trainer's input format",
    "evaluate": "training's metrics (classifier/evaluate_metrics)",
    "sklearn": "training's confusion matrix",
    "matplotlib": "training's plots",
    "prefect": "the flows orchestrate; the services are started by bentoml, not by a flow",
    "great_expectations": "ticket and document contracts, checked at ingest and at knowledge-base build",
    "torch": "loaded only when the `torch` variant is served: the ONNX variants and the knowledge base's embedder run on ONNX Runtime",
    "flows": "the Prefect flows",
}

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
exec(sys.argv[2])
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules} | {n for n in sys.argv[3:] if n in sys.modules})))
"""


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_service_and_its_start_up_import_no_training_or_orchestration_code(service: str) -> None:
    module, startup = SERVICES[service]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout first, whatever the environment's editable install points at
    command = [sys.executable, "-c", PROBE, module, "\n".join(startup), *NOT_SERVED]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "supportflow" in loaded and "bentoml" in loaded  # the probe did import the service
    unwanted = {name: why for name, why in NOT_SERVED.items() if name in loaded}
    assert not unwanted, f"{module} loads what serving does not need: {unwanted}"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_only_the_cli_imports_the_flows() -> None:
    """The flows call the library, never the other way round: the CLI is the one place that runs them."""
    allowed = {ROOT / "supportflow" / "cli.py"}
    offenders = {
        str(path.relative_to(ROOT)): sorted(name for name in imported_modules(path) if name == "flows" or name.startswith("flows."))
        for folder in ("supportflow", "bentos")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path not in allowed
    }
    assert not {path: names for path, names in offenders.items() if names}
    assert any(name.startswith("flows.") for name in imported_modules(ROOT / "supportflow" / "cli.py"))  # the check reads real imports
