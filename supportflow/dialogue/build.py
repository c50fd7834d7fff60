"""Build the dialogue model for the current champion: assemble the Rasa project from the desk's dialogue files and
what its catalogue and tickets imply, validate it, train it, run the desk's conversation tests, and log the
archive and the test report to MLflow next to the classifier version it was built for."""

import re
import time
from collections.abc import Sequence
from pathlib import Path

import mlflow
import yaml
from pydantic import BaseModel

from supportflow.classifier.artifacts import ClassifierCard, download_classifier
from supportflow.dialogue.project import DialogueFilesError, read_desk_dialogue, workspace_path, write_project
from supportflow.dialogue.rasa_cli import VALIDATE, RasaCommandError, validate_train_and_test
from supportflow.lake import Lake
from supportflow.release.production import alias_version
from supportflow.settings import Settings
from supportflow.tracking import CHAMPION, start_run
from supportflow.validate.catalogue import load_catalogue
from supportflow.validate.snapshot import latest_snapshot, read_split
from supportflow.workspace import workspace

EXAMPLES_PER_INTENT = 5


class ConversationTests(BaseModel):
    """The outcome of the desk's conversation tests (`domain/tests/`), read from Rasa's own report."""

    stories: int
    failed: list[str]  # the names of the stories whose actions Rasa did not predict
    report: Path
    first_wrong: dict[str, str] = {}  # story -> its first step Rasa predicted otherwise, with what it predicted

    def line(self) -> str:
        return f"conversation tests: {self.stories - len(self.failed)} of {self.stories} stories pass"


def read_conversation_tests(tests: Path, report: Path) -> ConversationTests:
    stories = [
        story["story"]
        for path in sorted(tests.glob("*.y*ml"))
        for story in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stories") or []
    ]
    failed_file = report / "failed_test_stories.yml"
    failed_document = yaml.safe_load(failed_file.read_text(encoding="utf-8")) if failed_file.exists() else None
    failed = [story["story"] for story in (failed_document or {}).get("stories") or []]
    first_wrong = _first_wrong_steps(failed_file.read_text(encoding="utf-8")) if failed_file.exists() else {}
    return ConversationTests(stories=len(stories), failed=failed, report=report, first_wrong=first_wrong)


_STORY = re.compile(r"^- story:\s*(?P<name>.+?)\s*$")
_PREDICTED = re.compile(r"^\s*-?\s*(?P<step>[^#]+?)\s*#\s*predicted:\s*(?P<predicted>.+?)\s*$")


def _first_wrong_steps(failed_stories: str) -> dict[str, str]:
    """Rasa marks each step it predicted otherwise with a comment (`- action: x  # predicted: y`); the first one of
    a story is where it went wrong, and a desk fixing its test needs that line, not the whole report."""
    found: dict[str, str] = {}
    story = None
    for line in failed_stories.splitlines():
        if started := _STORY.match(line):
            story = started["name"]
        elif story and story not in found and (marked := _PREDICTED.match(line)):
            found[story] = f"`{marked['step']}`, where Rasa predicted `{marked['predicted']}`"
    return found


class DialogueBuild(BaseModel):
    project: Path
    model: Path
    classifier_version: str
    fallback_threshold: float
    intents: int
    seconds: float
    run_id: str
    conversations: ConversationTests | None = None

    def lines(self) -> list[str]:
        tested = self.conversations.line() if self.conversations else "no conversation tests in the workspace"
        return [
            f"Rasa model {self.model} for intent-classifier v{self.classifier_version},"
            f" fallback at {self.fallback_threshold:.4g} ({self.seconds:.0f} s); {tested}"
        ]


def _where_they_went_wrong(conversations: ConversationTests) -> str:
    lines = [f"\n  {story}: first wrong at {step}" for story, step in conversations.first_wrong.items()]
    if any(step.endswith("_form`") for step in conversations.first_wrong.values()):
        lines.append(
            "\n  an intent whose `needs` (intents.yaml) names a slot asks for it through its form before it answers:"
            " its steps in the test run the form first, as examples/banking77/domain/tests/test_stories.yml shows"
        )
    return "".join(lines)


def nlu_examples(lake: Lake, patterns: Sequence[re.Pattern[str]] = (), per_intent: int = EXAMPLES_PER_INTENT) -> dict[str, list[str]]:
    """A few real examples per intent from the training split: Rasa's data checks want them. As many again that hold
    a value one of the desk's entity regexes matches, where the first few hold none: the build marks those values,
    and Rasa's extractor learns a regex only from marked examples."""
    train = read_split(lake, latest_snapshot(lake).snapshot_id, "train")
    examples = {}
    for intent, group in train.groupby("intent"):
        texts = group["text"].head(per_intent).tolist()
        if patterns and not any(pattern.search(text) for text in texts for pattern in patterns):
            holding = group["text"][group["text"].map(lambda text: any(pattern.search(text) for pattern in patterns))]
            texts += holding.head(per_intent).tolist()
        examples[intent] = texts
    return examples


def build_dialogue(settings: Settings, lake: Lake) -> DialogueBuild:
    started = time.perf_counter()
    version, _ = alias_version(settings, CHAMPION)
    card = ClassifierCard.load(download_classifier(settings, version))
    desk = workspace(settings)
    catalogue = load_catalogue(settings.catalogue_file)
    dialogue = read_desk_dialogue(desk.dialogue_dir)
    project = write_project(
        settings.rasa_project_dir,
        catalogue,
        dialogue,
        nlu_examples(lake, [pattern for found in dialogue.patterns().values() for pattern in found]),
        card.threshold,
        f"{settings.classifier_url}/classify",
        desk.config.language,
    )
    try:
        built = validate_train_and_test(settings, project)
    except RasaCommandError as error:
        if error.command == VALIDATE:  # the desk's files, named as the desk wrote them
            raise DialogueFilesError(workspace_path(str(error), project, dialogue)) from error
        raise
    validation, model, report = built.validation, built.model, built.report
    conversations = read_conversation_tests(project / "tests", report) if report else None
    seconds = time.perf_counter() - started
    with start_run(settings, settings.dialogue_experiment, f"rasa-for-v{version}") as run:
        mlflow.set_tags({"classifier_version": version, "registered_model": settings.registered_model_name, "workspace": desk.config.name})
        mlflow.log_params({"classifier_version": version, "fallback_threshold": card.threshold, "intents": len(catalogue.intents)})
        mlflow.log_metric("build_seconds", seconds)
        mlflow.log_artifact(str(model), artifact_path="rasa")
        mlflow.log_artifacts(str(project / "domain"), artifact_path="rasa/project/domain")
        mlflow.log_artifacts(str(project / "data"), artifact_path="rasa/project/data")
        mlflow.log_artifact(str(project / "config.yml"), artifact_path="rasa/project")
        mlflow.log_text(validation, "rasa/validate.txt")
        if conversations:
            mlflow.log_metrics({"conversation_stories": conversations.stories, "conversation_stories_failed": len(conversations.failed)})
            mlflow.log_artifacts(str(conversations.report), artifact_path="rasa/tests")
    if conversations and conversations.failed:
        raise DialogueFilesError(
            f"{len(conversations.failed)} of the workspace's conversation tests fail ({', '.join(conversations.failed)});"
            f" Rasa's report, with each wrong prediction marked, is {conversations.report / 'failed_test_stories.yml'}"
            f" and in MLflow run {run.info.run_id}" + _where_they_went_wrong(conversations)
        )
    return DialogueBuild(
        project=project,
        model=model,
        classifier_version=version,
        fallback_threshold=card.threshold,
        intents=len(catalogue.intents),
        seconds=seconds,
        run_id=run.info.run_id,
        conversations=conversations,
    )
