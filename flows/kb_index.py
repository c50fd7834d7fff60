"""The `kb_index` flow: knowledge-base sources into a new search index, swapped in once it answers."""

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from supportflow.kb.build import BuildReport, build_knowledge_base, labelled_questions
from supportflow.kb.tracking import log_build
from supportflow.settings import get_settings


@flow(name="kb_index")
def kb_index(sources: list[str] | None = None) -> BuildReport:
    """Load, validate, build, smoke-query, calibrate and swap; then record the build in MLflow."""
    settings = get_settings()
    logger = get_run_logger()
    labelled, why = labelled_questions(settings)
    logger.info("calibration questions: %s", why)
    report = build_knowledge_base(settings, [Path(s) for s in sources] if sources else None, labelled=labelled)
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
    create_markdown_artifact(key="kb-build", markdown=report.markdown(), description="Knowledge-base build summary")
    return report
