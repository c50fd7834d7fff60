"""Build the dialogue model for the current champion: generate the Rasa project, validate, train,
and log the archive to MLflow next to the classifier version it was built for."""

import time
from pathlib import Path

import mlflow
from pydantic import BaseModel

from supportflow.classifier.artifacts import ClassifierCard, download_classifier
from supportflow.dialogue.project import write_project
from supportflow.dialogue.rasa_cli import train_rasa_model, validate_project
from supportflow.lake import Lake
from supportflow.release.production import alias_version
from supportflow.settings import Settings
from supportflow.tracking import CHAMPION, start_run
from supportflow.validate.catalogue import load_catalogue
from supportflow.validate.snapshot import latest_snapshot, read_split

EXAMPLES_PER_INTENT = 5


class DialogueBuild(BaseModel):
    project: Path
    model: Path
    classifier_version: str
    fallback_threshold: float
    intents: int
    seconds: float
    run_id: str

    def lines(self) -> list[str]:
        return [
            f"Rasa model {self.model} for intent-classifier v{self.classifier_version},"
            f" fallback at {self.fallback_threshold:.3f} ({self.seconds:.0f} s)"
        ]


def nlu_examples(lake: Lake, per_intent: int = EXAMPLES_PER_INTENT) -> dict[str, list[str]]:
    """A few real examples per intent from the training split: Rasa's data checks want them."""
    train = read_split(lake, latest_snapshot(lake).snapshot_id, "train")
    return {intent: group["text"].head(per_intent).tolist() for intent, group in train.groupby("intent")}


def build_dialogue(settings: Settings, lake: Lake) -> DialogueBuild:
    started = time.perf_counter()
    version, _ = alias_version(settings, CHAMPION)
    card = ClassifierCard.load(download_classifier(settings, version))
    intents = load_catalogue(settings.catalogue_file).intents
    project = write_project(settings.rasa_project_dir, intents, nlu_examples(lake), card.threshold, f"{settings.classifier_url}/classify")
    validate_project(settings, project)
    model = train_rasa_model(settings, project)
    seconds = time.perf_counter() - started
    with start_run(settings, settings.dialogue_experiment, f"rasa-for-v{version}") as run:
        mlflow.set_tags({"classifier_version": version, "registered_model": settings.registered_model_name})
        mlflow.log_params({"classifier_version": version, "fallback_threshold": card.threshold, "intents": len(intents)})
        mlflow.log_metric("build_seconds", seconds)
        mlflow.log_artifact(str(model), artifact_path="rasa")
        for name in ("domain.yml", "config.yml"):
            mlflow.log_artifact(str(project / name), artifact_path="rasa/project")
    return DialogueBuild(
        project=project,
        model=model,
        classifier_version=version,
        fallback_threshold=card.threshold,
        intents=len(intents),
        seconds=seconds,
        run_id=run.info.run_id,
    )
