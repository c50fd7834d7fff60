"""The whole loop as one run: its report, and the keys that let a re-run skip the stages it already finished.

The knowledge-base and dialogue stages are cached on their inputs (sources and settings, the champion, the
snapshot, the code) and on the stores they write to, so a run against another store never reuses a build
that lives elsewhere.
"""

from pydantic import BaseModel

from supportflow.classifier.training import TrainingSummary
from supportflow.dialogue.build import DialogueBuild
from supportflow.digest import files_digest, text_digest
from supportflow.ingest.load import IngestReport
from supportflow.kb.build import KB_SUITE, BuildReport
from supportflow.release.promote import ReleaseSummary
from supportflow.settings import PROJECT_ROOT, Settings
from supportflow.validate.snapshot import SnapshotManifest
from supportflow.workspace import TicketSource, kb_sources, workspace


class PipelineSummary(BaseModel):
    ingest: list[IngestReport]
    snapshot: SnapshotManifest
    training: TrainingSummary
    knowledge_base: BuildReport
    dialogue: DialogueBuild
    release: ReleaseSummary
    stages: dict[str, float]  # seconds per stage, this run (a cached stage takes about nothing)
    total_seconds: float

    def sections(self) -> dict[str, list[str]]:
        """Each stage's lines under its name: what the CLI prints after a run."""
        return {
            "ingest": [line for report in self.ingest for line in report.lines()],
            "validate": self.snapshot.lines(),
            "train": self.training.lines(),
            "knowledge base": self.knowledge_base.lines(),
            "dialogue": self.dialogue.lines(),
            "release": self.release.lines(),
            "stages (seconds)": [
                ", ".join(f"{name} {seconds:.0f}" for name, seconds in self.stages.items()),
                f"total {self.total_seconds:.0f}",
            ],
        }

    def markdown(self) -> str:
        rows = "\n".join(f"| {name} | {seconds:.1f} |" for name, seconds in self.stages.items())
        training, released = self.training, self.release.release
        return (
            f"**Pipeline** on snapshot `{self.snapshot.snapshot_id}`: intent-classifier v{training.version} ({training.gate_reason});"
            f" production release `{released.release_id}` serves v{training.champion_version}\n\n"
            f"| stage | seconds |\n|---|---|\n{rows}\n| total | {self.total_seconds:.1f} |"
        )


def ticket_exports(settings: Settings, paths: list[str] | None, source: str | None) -> list[tuple[list[str], TicketSource]]:
    """What a pipeline run ingests: the given files, or with none given the workspace's ticket sources."""
    if paths is None:
        return workspace(settings).ticket_files()
    return [(paths, TicketSource(path="", source=source))] if paths else []


def _stores(settings: Settings) -> str:
    return text_digest(settings.lake_url, settings.mlflow_tracking_uri, settings.kb_dir.resolve(), settings.rasa_project_dir)


def kb_stage_key(settings: Settings, snapshot_id: str) -> str:
    names = {name for name in Settings.model_fields if name.startswith(("kb_", "search_", "es_"))}
    # The knowledge-base contract is read too: a desk's override in its data_contracts/ first, then the project's.
    sources = files_digest([*kb_sources(settings), settings.catalogue_file, *(folder / KB_SUITE for folder in settings.suite_dirs)])
    return text_digest("kb", sources, settings.model_dump_json(include=names), snapshot_id, _stores(settings))


def dialogue_stage_key(settings: Settings, champion_version: str, snapshot_id: str) -> str:
    code = files_digest(
        [PROJECT_ROOT / "supportflow" / "dialogue", settings.contracts_dir, settings.catalogue_file, workspace(settings).dialogue_dir]
    )
    return text_digest("dialogue", champion_version, snapshot_id, code, _stores(settings))
