"""Recording a knowledge-base build in MLflow, so every index the bot served can be traced to its content."""

import mlflow

from supportflow.kb.build import BuildReport
from supportflow.settings import Settings
from supportflow.tracking import start_run


def log_build(report: BuildReport, settings: Settings) -> str:
    """One run per build in the `kb-index` experiment; returns the run id."""
    with start_run(settings, settings.kb_experiment, f"kb-{report.build_id}") as run:
        mlflow.set_tags({"build_id": report.build_id, "content_hash": report.content_hash, "backend": report.backend})
        mlflow.log_params(
            {
                "index_name": report.index_name,
                "retrieval": report.retrieval,
                "sources": ",".join(report.sources),
                "threshold_source": report.calibration.source if report.calibration else "none",
            }
        )
        metrics = {
            "documents": report.documents,
            "passages": report.passages,
            "skipped": len(report.skipped),
            "threshold": report.calibration.threshold if report.calibration else 0.0,
            **{f"seconds_{step}": seconds for step, seconds in report.timings_s.items()},
            **{f"sanitised_{what}": n for what, n in report.sanitised.items()},
            **{f"redacted_{kind}": n for kind, n in report.redactions.items()},
        }
        if report.smoke:
            metrics["smoke_hit_rate"] = report.smoke.hit_rate
        if report.calibration and report.calibration.accuracy is not None:
            metrics["calibration_accuracy"] = report.calibration.accuracy
        mlflow.log_metrics(metrics)
        mlflow.log_dict(report.model_dump(mode="json"), "build_report.json")
        return run.info.run_id
