"""What starting a BentoML service costs before it loads a model: importing its code.

Each run is a fresh interpreter (nothing cached in-process, the OS file cache warm after the first run), as
`bentoml serve` starts one per worker. Two figures per service: the import of the service module itself, then
the imports its start-up (`__init__`) makes before it loads a model; the resident memory after each; and which
heavy packages are loaded by then, the ones serving should never pay for among them. Writes
bench/results/service_imports.json, keeping the `before` figures it holds unless `--before` measures them anew
from another checkout (e.g. `git worktree add /tmp/before <commit>`).

    .venv/bin/python bench/service_imports.py [--runs 5] [--before /tmp/before]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "service_imports.json"


SERVICES: dict[str, tuple[str, tuple[str, ...]]] = {
    # service: (its module, the imports its __init__ makes before a model is loaded)
    "classifier": (
        "bentos.classifier.service",
        (
            "from supportflow.classifier.served import load_bundled_classifier, load_serving_classifier, load_version",
            "from supportflow.release.production import ProductionFollower",
        ),
    ),
    "bot": (
        "bentos.bot.service",
        (
            "from supportflow.kb.build import open_knowledge_base",
            "from supportflow.kb.tantivy_index import TantivyIndex",  # what open_knowledge_base imports to open the build
            "import onnxruntime, tokenizers",  # the knowledge base's query embedder
            "from supportflow.release.production import ProductionFollower, served_version",
        ),
    ),
}

# Training, orchestration and data-validation packages: serving needs none of them.
TRAINING_ONLY = ("transformers.trainer", "datasets", "accelerate", "evaluate", "prefect", "great_expectations")
# Heavy, and needed by some serving paths only (torch: the `torch` variant; sklearn, matplotlib: nothing served).
HEAVY = (*TRAINING_ONLY, "torch", "sklearn", "matplotlib", "scipy", "mlflow", "transformers", "onnxruntime", "pandas")

PROBE = """
import importlib, json, sys, time

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

started = time.perf_counter()
importlib.import_module(sys.argv[1])
module_seconds = time.perf_counter() - started
module_rss, module_heavy = rss_mb(), [m for m in sys.argv[3:] if m in sys.modules]
started = time.perf_counter()
exec(sys.argv[2])
startup_seconds = module_seconds + time.perf_counter() - started
print(json.dumps({
    "module_seconds": module_seconds, "module_rss_mb": module_rss, "module_heavy": module_heavy,
    "startup_seconds": startup_seconds, "startup_rss_mb": rss_mb(), "startup_heavy": [m for m in sys.argv[3:] if m in sys.modules],
}))
"""


def environment(root: Path) -> dict[str, str]:
    """The checkout's own code first on the path: the virtual environment's editable install may point elsewhere."""
    return {
        **os.environ,
        "PYTHONPATH": str(root),
        "BENTOML_DO_NOT_TRACK": "true",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def probe(root: Path, module: str, startup: tuple[str, ...]) -> dict:
    command = [sys.executable, "-c", PROBE, module, "\n".join(startup), *HEAVY]
    done = subprocess.run(command, cwd=root, env=environment(root), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"importing {module} in {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(root: Path, runs: int) -> dict:
    results = {}
    for name, (module, startup) in SERVICES.items():
        probe(root, module, startup)  # the first run reads the packages from disk; the OS caches them for the rest
        samples = [probe(root, module, startup) for _ in range(runs)]
        results[name] = {
            "module": module,
            "import_seconds_median": round(statistics.median(s["module_seconds"] for s in samples), 2),
            "rss_mb": round(statistics.median(s["module_rss_mb"] for s in samples)),
            "heavy_modules": samples[-1]["module_heavy"],
            "startup_imports": list(startup),
            "startup_import_seconds_median": round(statistics.median(s["startup_seconds"] for s in samples), 2),
            "startup_rss_mb": round(statistics.median(s["startup_rss_mb"] for s in samples)),
            "startup_heavy_modules": samples[-1]["startup_heavy"],
        }
        print(name, json.dumps(results[name]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before", type=Path, help="a checkout of the earlier commit to measure as `before`")
    args = parser.parse_args()
    previous = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    if args.before is not None:
        root = args.before.resolve()
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        result = {**previous, "before": {"commit": commit.stdout.strip(), "services": measure(root, args.runs)}}
    else:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        result = {
            "what": "importing each BentoML service's code in a fresh interpreter: the module, then what its start-up imports",
            "runs": args.runs,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": commit.stdout.strip(),
            "training_only_modules": list(TRAINING_ONLY),
            "services": measure(ROOT, args.runs),
            **({"before": previous["before"]} if "before" in previous else {}),
        }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
