"""The `dialogue` flow: the Rasa model for the current champion classifier."""

from prefect import flow, get_run_logger

from supportflow.dialogue.build import DialogueBuild, build_dialogue
from supportflow.lake import open_lake
from supportflow.settings import get_settings


@flow(name="dialogue", retries=1)
def dialogue() -> DialogueBuild:
    settings = get_settings()
    build = build_dialogue(settings, open_lake(settings))
    get_run_logger().info("Rasa model %s for intent-classifier v%s in %.0f s", build.model, build.classifier_version, build.seconds)
    return build
