"""The classifier's metrics as local `evaluate` modules.

`evaluate.load("accuracy")` fetches its script from the hub, which is out of reach offline; these
modules live in the project and are loaded by path, so the same code runs with or without a network.
"""

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).resolve().parent


def load_metric(name: str) -> evaluate.EvaluationModule:
    """One of `accuracy`, `macro_f1`, `per_intent`, loaded from this folder."""
    path = METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"no local metric {name!r} under {METRICS_DIR}")
    return evaluate.load(str(path))
