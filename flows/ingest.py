"""The `ingest` flow: ticket exports into the lake."""

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from supportflow.ingest.decoding import DEFAULT_ENCODING
from supportflow.ingest.load import IngestReport, existing_ticket_ids, ingest_file
from supportflow.ingest.readers import Format
from supportflow.ingest.tickets import KnownIds
from supportflow.lake import open_lake
from supportflow.progress import Step
from supportflow.settings import Settings, get_settings


@task(name="ingest-file", cache_policy=NO_CACHE)
def ingest_one(path: str, source: str | None, fmt: Format | None, encoding: str, known_ids: KnownIds, settings: Settings) -> IngestReport:
    return ingest_file(path, open_lake(settings), settings, source=source, fmt=fmt, known_ids=known_ids, encoding=encoding)


@flow(name="ingest")
def ingest(
    paths: list[str],
    source: str | None = None,
    fmt: Format | None = None,
    field_map: dict[str, str] | None = None,
    encoding: str = DEFAULT_ENCODING,
    zendesk_intent_field_id: int | None = None,
) -> list[IngestReport]:
    """Ingest each file in turn; ids seen earlier in the run count as duplicates too. `field_map` adds to the
    configured one for these files (a workspace's ticket source names its own columns), and `encoding` and
    `zendesk_intent_field_id` (over the setting) are theirs."""
    logger = get_run_logger()
    settings = get_settings().with_field_map(field_map)
    if zendesk_intent_field_id is not None:
        settings = settings.model_copy(update={"zendesk_intent_field_id": zendesk_intent_field_id})
    known = existing_ticket_ids(open_lake(settings))
    reports = []
    with Step("ingest", total=len(paths)) as step:
        for path in paths:
            step.describe(path)
            report = ingest_one(path, source, fmt, encoding, known, settings)
            logger.info("%s", "; ".join(report.lines()))
            reports.append(report)
            step.advance()
    create_markdown_artifact(
        key="ingest-report", markdown=IngestReport.markdown(reports), description="What the ingest run landed and what it quarantined"
    )
    return reports
