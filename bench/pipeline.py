"""Time the whole loop at full quality on BANKING77, from an empty store, on this machine.

Runs `flows/pipeline.py:pipeline` with the full training profile against a fresh lake, MLflow store,
knowledge-base folder, Rasa project and bundle store (`--store`, emptied first), so nothing is cached or
resumed, and writes bench/results/pipeline.json with `total_seconds` and `stages` (seconds per stage).
Target: at most 30 minutes on 2 cores. The store is kept: `bench/serve.py --store` serves its release.
"""

import argparse
import json
import os
import platform
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "pipeline.json"
TARGET_SECONDS = 30 * 60


def fresh_store(folder: Path, profile: str) -> dict[str, str]:
    return {
        "SUPPORTFLOW_TRAIN_PROFILE": profile,
        "SUPPORTFLOW_LAKE_URL": str(folder / "lake"),
        "SUPPORTFLOW_GX_ROOT": str(folder / "gx"),
        "SUPPORTFLOW_MODELS_DIR": str(folder / "models"),
        "SUPPORTFLOW_MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "SUPPORTFLOW_MLFLOW_ARTIFACT_ROOT": str(folder / "mlartifacts"),
        "SUPPORTFLOW_KB_DIR": str(folder / "kb"),
        "SUPPORTFLOW_RASA_PROJECT_DIR": str(folder / "rasa"),
        "SUPPORTFLOW_BENTOML_HOME": str(folder / "bentoml"),
        "SUPPORTFLOW_RUN_DIR": str(folder / "run"),
        "SUPPORTFLOW_HANDOFF_DB_URL": f"sqlite:///{folder / 'handoff.db'}",
        "SUPPORTFLOW_KB_MODEL_CACHE": str(ROOT / "models" / "embedder"),  # the embedding model's ONNX export, not a result
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="full", choices=["quick", "full"])
    parser.add_argument("--output", type=Path, default=RESULT)
    parser.add_argument("--store", type=Path, default=ROOT / ".cache" / "bench-pipeline")
    args = parser.parse_args()
    folder = args.store.resolve()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ.update(fresh_store(folder, args.profile))
    from flows.pipeline import pipeline  # after the environment names the fresh store

    started = time.perf_counter()
    summary = pipeline()
    wall = time.perf_counter() - started
    training = summary.training
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}",
        "profile": args.profile,
        "total_seconds": round(wall, 1),
        "stages": summary.stages,
        "target_seconds": TARGET_SECONDS,
        "classifier": {
            "version": training.version,
            "test_accuracy": round(training.test_accuracy, 4),
            "test_macro_f1": round(training.test_macro_f1, 4),
            "train_seconds": round(training.train_seconds, 1),
            "base_model": training.base_model,
        },
        "release": summary.release.release.release_id,
        "smoke_seconds": round(summary.release.smoke.seconds, 1),
        "note": "one run from an empty store (nothing cached or resumed); the flow's own stage timings",
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
