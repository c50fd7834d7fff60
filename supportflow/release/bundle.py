"""Bundles: the BentoML bentos that production runs, one for the classifier and one for the bot.

A bundle is immutable and self-describing: the classifier bento carries the registry version it was
built from as a BentoML model, the bot bento carries the Rasa model it talks through, and both record
every version inside as labels. Builds are content-addressed (the code, the models), so re-running the
bundle stage after a failure finds the bentos it already built instead of building duplicates.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel

from supportflow.classifier.artifacts import download_classifier
from supportflow.digest import files_digest
from supportflow.errors import SupportflowError
from supportflow.progress import Step
from supportflow.settings import PROJECT_ROOT, Settings
from supportflow.tracking import connect
from supportflow.workspace import BUNDLED_WORKSPACE, CONFIG_FILE, workspace

CLASSIFIER_MODEL = "supportflow-intent-classifier"
DIALOGUE_MODEL = "supportflow-dialogue"
CLASSIFIER_BENTO = "supportflow-classifier"
BOT_BENTO = "supportflow-bot"
BENTOFILES = {CLASSIFIER_BENTO: PROJECT_ROOT / "bentos/classifier/bentofile.yaml", BOT_BENTO: PROJECT_ROOT / "bentos/bot/bentofile.yaml"}
CODE_FOLDERS = ("supportflow", "bentos", "data_contracts")
BENTOML = str(Path(sys.executable).with_name("bentoml"))


class BundleError(SupportflowError):
    """`bentoml build` failed, or a bundle names a model the store does not hold."""


class Bundles(BaseModel):
    classifier: str  # bento tags
    bot: str
    classifier_model: str  # BentoML model tags inside them
    dialogue_model: str
    classifier_version: str
    serving_variant: str
    kb_build: str | None
    labels: dict[str, str]


def bentoml_environment(settings: Settings) -> dict[str, str]:
    return {**os.environ, "BENTOML_HOME": str(settings.bentoml_home), "BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "1"}


# BentoML's public API writes to the model store BENTOML_HOME names, which BentoML reads once, when it is imported:
# so the model is created in a process of its own, as `bentoml build` runs in one.
CREATE_MODEL = """
import json, shutil, sys
import bentoml

with bentoml.models.create(sys.argv[1], labels=json.loads(sys.argv[2])) as model:
    shutil.copytree(sys.argv[3], model.path, dirs_exist_ok=True)
"""


def create_model(settings: Settings, tag: str, labels: dict[str, str], folder: Path) -> None:
    """A BentoML model holding the folder's files, in the settings' BentoML home."""
    settings.bentoml_home.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-c", CREATE_MODEL, tag, json.dumps(labels), str(folder)]
    result = subprocess.run(command, env=bentoml_environment(settings), capture_output=True, text=True)
    if result.returncode != 0 or not _exists(settings, "models", tag):
        raise BundleError(f"creating the BentoML model {tag} failed (status {result.returncode}): {result.stderr[-2000:]}")


def _exists(settings: Settings, kind: str, tag: str) -> bool:
    name, version = tag.split(":")
    return (settings.bentoml_home / kind / name / version).is_dir()


def code_digest() -> str:
    """What the bentos' code is: every file they include, so a code change builds a new bundle."""
    return files_digest([*(PROJECT_ROOT / folder for folder in CODE_FOLDERS), *BENTOFILES.values()], PROJECT_ROOT)


def import_classifier(settings: Settings, version: str) -> tuple[str, str]:
    """The registry version as a BentoML model (once per version); returns its tag and serving variant."""
    client = connect(settings)
    registered = client.get_model_version(settings.registered_model_name, version)
    variant = client.get_run(registered.run_id).data.tags.get("serving_variant", "torch")
    tag = f"{CLASSIFIER_MODEL}:v{version}"
    if _exists(settings, "models", tag):
        return tag, variant
    labels = {"registered_model": settings.registered_model_name, "version": version, "run_id": registered.run_id, "variant": variant}
    create_model(settings, tag, labels, download_classifier(settings, version))
    return tag, variant


def import_dialogue(settings: Settings, archive: Path, classifier_version: str) -> str:
    """The Rasa model archive as a BentoML model, named by its content, with the desk's words the bot speaks.

    The workspace's `supportflow.yaml` (the bot's texts) and `intents.yaml` (the catalogue agents label with) travel
    in the model, so a bundle serves the desk it was built for on any machine, whatever workspace is there."""
    desk = workspace(settings)
    carried = [desk.root / CONFIG_FILE, desk.catalogue_file]
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in [archive, *carried])).hexdigest()[:16]
    tag = f"{DIALOGUE_MODEL}:{digest}"
    if not _exists(settings, "models", tag):
        labels = {"classifier_version": classifier_version, "workspace": desk.config.name}
        with tempfile.TemporaryDirectory(prefix="dialogue-model-") as staging:
            shutil.copy2(archive, Path(staging) / "model.tar.gz")
            (Path(staging) / BUNDLED_WORKSPACE).mkdir()
            for path in carried:
                shutil.copy2(path, Path(staging) / BUNDLED_WORKSPACE / path.name)
            create_model(settings, tag, labels, Path(staging))
    return tag


def dialogue_archive(settings: Settings, tag: str) -> Path:
    """The Rasa archive a dialogue model tag names, for Rasa to load."""
    name, version = tag.split(":")
    archive = settings.bentoml_home / "models" / name / version / "model.tar.gz"
    if not archive.exists():
        raise BundleError(f"the dialogue model {tag} is not in {settings.bentoml_home / 'models'}")
    return archive


def build_bento(settings: Settings, name: str, version: str, labels: dict[str, str], arguments: dict[str, str]) -> str:
    """`bentoml build` of one bento in the settings' BentoML home; a tag already built is reused (tags are content-addressed)."""
    tag = f"{name}:{version}"
    if _exists(settings, "bentos", tag):
        return tag
    command = [BENTOML, "build", "-f", str(BENTOFILES[name]), "--version", version, "-o", "tag"]
    for key, value in labels.items():
        command += ["--label", f"{key}={value}"]
    for key, value in arguments.items():
        command += ["--arg", f"{key}={value}"]
    result = subprocess.run([*command, str(PROJECT_ROOT)], env=bentoml_environment(settings), capture_output=True, text=True)
    if result.returncode != 0 or not _exists(settings, "bentos", tag):
        raise BundleError(f"`bentoml build` of {tag} failed (status {result.returncode}): {(result.stderr or result.stdout)[-2000:]}")
    return tag


def build_bundles(settings: Settings, classifier_version: str, dialogue_model: Path, kb_build: str | None) -> Bundles:
    """Both bentos for this classifier version, dialogue model and code; existing ones are reused."""
    step = Step("build bundles", total=4)
    classifier_model, variant = import_classifier(settings, classifier_version)
    step.advance(detail="classifier model imported")
    dialogue = import_dialogue(settings, dialogue_model, classifier_version)
    step.advance(detail="dialogue model imported")
    code = code_digest()
    labels = {
        "classifier_version": classifier_version,
        "classifier_model": classifier_model,
        "serving_variant": variant,
        "dialogue_model": dialogue,
        "kb_build": kb_build or "none",
        "code": code[:12],
    }
    # Tags must be content-addressed and short: the classifier version, then a digest of everything inside.
    inside = hashlib.sha256(f"{code}|{classifier_model}|{dialogue}|{kb_build}".encode()).hexdigest()[:12]
    version = f"v{classifier_version}-{inside}"
    classifier = build_bento(settings, CLASSIFIER_BENTO, version, labels, {"model": classifier_model})
    step.advance(detail=classifier)
    bot = build_bento(settings, BOT_BENTO, version, labels, {"dialogue": dialogue})
    step.advance(detail=bot)
    step.close()
    return Bundles(
        classifier=classifier,
        bot=bot,
        classifier_model=classifier_model,
        dialogue_model=dialogue,
        classifier_version=classifier_version,
        serving_variant=variant,
        kb_build=kb_build,
        labels=labels,
    )
