"""The `kb_index` flow: knowledge-base sources into a new search index, swapped in once it answers."""

from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from supportflow.errors import SupportflowError
from supportflow.kb.build import BuildReport, build_knowledge_base
from supportflow.kb.tracking import log_build
from supportflow.lake import open_lake
from supportflow.settings import get_settings
from supportflow.validate.snapshot import latest_snapshot, read_split


def labelled_questions() -> pd.DataFrame | None:
    """The latest snapshot's validation split calibrates the answer/escalate threshold, when there is one."""
    settings = get_settings()
    try:
        lake = open_lake(settings)
        return read_split(lake, latest_snapshot(lake).snapshot_id, "validation")[["text", "intent"]]
    except SupportflowError as error:
        get_run_logger().warning("no labelled questions to calibrate the threshold (%s); the default threshold is used", error)
        return None


@flow(name="kb_index")
def kb_index(sources: list[str] | None = None) -> BuildReport:
    """Load, validate, build, smoke-query, calibrate and swap; then record the build in MLflow."""
    settings = get_settings()
    logger = get_run_logger()
    report = build_knowledge_base(settings, [Path(s) for s in sources] if sources else None, labelled=labelled_questions())
    run_id = log_build(report, settings)
    logger.info(
        "knowledge base %s serving: %d documents, %d passages, %d skipped, threshold %.3f (%s); MLflow run %s",
        report.build_id,
        report.documents,
        report.passages,
        len(report.skipped),
        report.calibration.threshold if report.calibration else 0.0,
        report.calibration.source if report.calibration else "-",
        run_id,
    )
    skipped = "\n".join(f"| {item.item} | {item.reason} |" for item in report.skipped) or "| - | - |"
    create_markdown_artifact(
        key="kb-build",
        markdown=(
            f"**Build** `{report.build_id}` ({report.backend}, retrieval {report.retrieval}) replaced `{report.previous_build}`\n\n"
            f"documents {report.documents}, passages {report.passages}, content hash `{report.content_hash[:16]}`\n\n"
            f"threshold {report.calibration.threshold if report.calibration else '-'}, timings {report.timings_s}\n\n"
            f"| skipped | reason |\n|---|---|\n{skipped}"
        ),
        description="Knowledge-base build summary",
    )
    return report
