"""The knowledge-gap report in MLflow: one run a report, its topics as a table and the whole report as JSON."""

import mlflow

from supportflow.review.gaps import GapReport
from supportflow.settings import Settings
from supportflow.tracking import start_run

REPORT_ARTIFACT = "knowledge_gaps.json"
TABLE_ARTIFACT = "knowledge_gaps_table.json"


def log_gap_report(report: GapReport, settings: Settings) -> str:
    with start_run(settings, settings.gaps_experiment, f"gaps-{report.generated_at:%Y%m%dT%H%M%S}") as run:
        mlflow.log_params(
            {
                "window_start": str(report.window_start),
                "window_end": str(report.window_end),
                "kb_threshold": report.kb_threshold,
            }
        )
        mlflow.log_metrics({"questions": report.questions, "topics": len(report.topics)})
        mlflow.log_dict(report.model_dump(mode="json"), REPORT_ARTIFACT)
        if report.topics:
            mlflow.log_table(report.table(), TABLE_ARTIFACT)
        mlflow.log_text(report.markdown(run.info.run_id), "knowledge_gaps.md")
    return run.info.run_id
