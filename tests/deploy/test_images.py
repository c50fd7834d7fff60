"""What each image's build can copy in: the code and its pins, never a working copy's local state (.env and the
keys in it, the lake, registries, handoff databases, bundle stores, run folders).

Each Dockerfile under deploy/ names its build command (and so its context) in its header; the build reads the
Dockerfile's own `<Dockerfile>.dockerignore`, else the context's `.dockerignore`, with Docker's matching rules
(the Docker SDK's implementation). The check runs on a copy of the repository's tracked files with the local state
a demo, a test run and a developer leave beside them, so it holds whatever this checkout happens to contain.
"""

import re
import subprocess
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml
from docker.utils import exclude_paths

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "deploy").glob("*/Dockerfile"))
LOCAL_STATE = [  # what must never reach an image
    ".env",
    ".env.production",
    "examples/banking77/.env",
    "supportflow/.env",
    ".lake/tickets/ingest_date=2026-01-01/x.parquet",
    "mlflow.db",
    "handoff.db",
    "examples/banking77/handoff.db",
    "mlartifacts/1/model.onnx",
    ".bentoml/bentos/supportflow-bot/latest",
    ".desks/saas/lake/turns/x.parquet",
    ".run/internal_token",
    ".run/stack.json",
    ".kb/kb-1/manifest.json",
    ".prefect/prefect.db",
    ".venv/bin/python",
    ".git/config",
    "models/base/model.safetensors",
    ".rasa/.rasa/cache/x",
]


@pytest.fixture(scope="module")
def working_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("working-copy")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    generated = [".rasa/endpoints.yml", ".rasa/models/supportflow.tar.gz", ".rasa/actions/actions.py"]  # what the pipeline writes
    for name in [*filter(None, tracked), *generated, *LOCAL_STATE]:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).touch()
    return copy


def build_context(dockerfile: Path) -> str:
    (command,) = re.findall(r"^#\s+docker build .*$", dockerfile.read_text(), re.M)
    return command.split()[-1]


def copied(dockerfile: Path, copy: Path) -> set[str]:
    """The files the Dockerfile's COPY lines take from the build context, relative to the repository root."""
    context = build_context(dockerfile)
    root = copy / context
    ignore = dockerfile.with_name(f"{dockerfile.name}.dockerignore")
    ignore = ignore if ignore.exists() else ROOT / context / ".dockerignore"
    patterns = (
        [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")] if ignore.exists() else []
    )
    sent = {path for path in exclude_paths(str(root), patterns) if (root / path).is_file()}
    taken: set[str] = set()
    for line in re.findall(r"^COPY (.+)$", dockerfile.read_text(), re.M):
        sources = [token for token in line.split() if not token.startswith("--")][:-1]
        for source in sources:
            prefix = source.rstrip("/").removeprefix("./")
            taken |= {path for path in sent if prefix in ("", ".") or path == prefix or path.startswith(f"{prefix}/")}
    return {str(Path(context) / path) if context != "." else path for path in taken}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_no_image_takes_local_state_or_secrets(dockerfile: Path, working_copy: Path) -> None:
    taken = copied(dockerfile, working_copy)
    leaked = sorted(path for path in taken if path in LOCAL_STATE or path.endswith((".db", ".env")) or "/.env" in path)
    assert not leaked, f"{dockerfile.relative_to(ROOT)} copies local state into its image: {leaked}"


@pytest.mark.parametrize(
    ("image", "needed"),
    [
        (
            "pipeline",
            [
                "requirements.lock",
                "pyproject.toml",
                "supportflow/settings.py",
                "flows/pipeline.py",
                "bentos/bot/service.py",
                "data_contracts/tickets.suite.json",
                "examples/banking77/intents.yaml",
                "deploy/rasa/constraints.txt",
            ],
        ),
        ("rasa", ["deploy/rasa/constraints.txt", ".rasa/endpoints.yml", ".rasa/models/supportflow.tar.gz", ".rasa/actions/actions.py"]),
    ],
)
def test_each_image_takes_what_it_runs(image: str, needed: list[str], working_copy: Path) -> None:
    """The allow-lists are not so strict that an image loses what it runs."""
    taken = copied(ROOT / "deploy" / image / "Dockerfile", working_copy)
    assert set(needed) <= taken, sorted(set(needed) - taken)


def test_the_bundles_take_code_only() -> None:
    """BentoML builds the bot's and the classifier's images from their bentofiles' `include` lists."""
    for bentofile in (ROOT / "bentos").glob("*/bentofile.yaml"):
        include = yaml.safe_load(bentofile.read_text())["include"]
        leaked = [path for path in LOCAL_STATE if any(fnmatch(path, pattern) for pattern in include)]
        assert not leaked, f"{bentofile.relative_to(ROOT)} would bundle {leaked}"
