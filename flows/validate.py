"""The `validate` flow: the lake's tickets against the data contracts, then a training snapshot."""

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from supportflow.lake import open_lake
from supportflow.settings import get_settings
from supportflow.validate.snapshot import SnapshotManifest, validate_lake


@flow(name="validate")
def validate() -> SnapshotManifest:
    settings = get_settings()
    manifest = validate_lake(open_lake(settings), settings)
    report = manifest.validation
    get_run_logger().info(
        "snapshot %s: read %d, accepted %d, quarantined %d %s; splits %s; %d intents left out (never predicted): %s",
        manifest.snapshot_id,
        report.rows_read,
        report.accepted,
        report.quarantined,
        report.by_rule,
        manifest.rows,
        len(manifest.left_out),
        ", ".join(f"{intent.intent} ({intent.examples})" for intent in manifest.left_out) or "none",
    )
    create_markdown_artifact(key="validation-report", markdown=manifest.markdown(), description="Validation and snapshot summary")
    return manifest
