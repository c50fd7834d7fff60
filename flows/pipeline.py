"""The `pipeline` flow: the main job, end to end, on whatever the configuration points at."""

from pathlib import Path

from prefect import flow
from pydantic import BaseModel

from flows.dialogue import dialogue
from flows.ingest import ingest
from flows.kb_index import kb_index
from flows.train import TrainingSummary, train
from flows.validate import validate
from supportflow.dialogue.build import DialogueBuild
from supportflow.ingest import IngestReport
from supportflow.kb.build import BuildReport
from supportflow.snapshot import SnapshotManifest

BANKING77 = Path(__file__).resolve().parent.parent / "data" / "banking77"


class PipelineSummary(BaseModel):
    ingest: list[IngestReport]
    snapshot: SnapshotManifest
    training: TrainingSummary
    knowledge_base: BuildReport
    dialogue: DialogueBuild


@flow(name="pipeline")
def pipeline(paths: list[str] | None = None, source: str = "banking77") -> PipelineSummary:
    paths = paths or [str(BANKING77 / "train.csv"), str(BANKING77 / "test.csv")]
    reports = ingest(paths, source=source)
    snapshot = validate()
    training = train()
    knowledge_base = kb_index()
    return PipelineSummary(ingest=reports, snapshot=snapshot, training=training, knowledge_base=knowledge_base, dialogue=dialogue())
