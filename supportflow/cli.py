"""The `supportflow` command: runs the flows and prints what they produced and where to look.

Expected failures print one line that says what is wrong and exit with status 2; the user never
sees a traceback for bad input.
"""

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from supportflow.errors import SupportflowError

if TYPE_CHECKING:
    from flows.train import TrainingSummary
    from supportflow.ingest import IngestReport
    from supportflow.snapshot import SnapshotManifest


def _print_ingest(reports: Sequence["IngestReport"]) -> None:
    for report in reports:
        print(
            f"  {report.file}: read {report.rows_read:,} = written {report.written:,} + duplicates {report.duplicates:,}"
            f" + quarantined {report.quarantined:,}; redactions {report.redactions or 'none'}"
        )
        if report.ignored_columns:
            print(f"    ignored columns: {', '.join(report.ignored_columns)}")
        for path in report.quarantine_files:
            print(f"    quarantine: {path}")


def _print_snapshot(manifest: "SnapshotManifest") -> None:
    report = manifest.validation
    print(f"  snapshot {manifest.snapshot_id} at {manifest.uri}")
    print(f"    rows read {report.rows_read:,} = accepted {report.accepted:,} + quarantined {report.quarantined:,} {report.by_rule or ''}")
    catalogue = f"{manifest.intent_catalogue}@{manifest.intent_catalogue_version}"
    print(f"    splits {manifest.rows}, {manifest.intents} intents, contract {manifest.contract_version}, catalogue {catalogue}")
    print(f"    data docs: {report.data_docs}")


def _print_training(summary: "TrainingSummary") -> None:
    print(f"  intent-classifier v{summary.version} @{', @'.join(summary.aliases)} (run {summary.run_id}, {summary.profile} profile)")
    print(f"    test accuracy {summary.test_accuracy:.4f}, macro-F1 {summary.test_macro_f1:.4f}; base {summary.base_model}")
    print(
        f"    fallback threshold {summary.threshold:.3f}: routes {summary.coverage_at_threshold:.1%} of test messages"
        f" at precision {summary.precision_at_threshold:.1%}; trained in {summary.train_seconds:.0f} s"
    )
    print(f"    gate: {summary.gate_reason}; champion is v{summary.champion_version}")


def cmd_train(args: argparse.Namespace) -> None:
    from flows.train import train

    print("train:")
    _print_training(train(profile=args.profile))


def cmd_rollback(args: argparse.Namespace) -> None:
    from supportflow.registry import rollback
    from supportflow.settings import get_settings

    settings = get_settings()
    before, after = rollback(settings)
    print(f"{settings.registered_model_name}: champion moved back from v{before} to v{after}")


def cmd_ingest(args: argparse.Namespace) -> None:
    from flows.ingest import ingest

    print("ingest:")
    _print_ingest(ingest(args.paths, source=args.source, fmt=args.format))


def cmd_validate(args: argparse.Namespace) -> None:
    from flows.validate import validate

    print("validate:")
    _print_snapshot(validate())


def cmd_demo(args: argparse.Namespace) -> None:
    from flows.pipeline import pipeline
    from supportflow.settings import get_settings

    summary = pipeline()
    settings = get_settings()
    print("\nsupportflow demo finished")
    print("ingest:")
    _print_ingest(summary.ingest)
    print("validate:")
    _print_snapshot(summary.snapshot)
    print("train:")
    _print_training(summary.training)
    print("where to look:")
    print(f"  lake:          {settings.lake_url}/ (tickets/, quarantine/, snapshots/)")
    print(f"  data docs:     {summary.snapshot.validation.data_docs}")
    print(f"  MLflow UI:     .venv/bin/mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}, then http://127.0.0.1:5000")
    print("  Prefect UI:    .venv/bin/prefect server start, then http://127.0.0.1:4200 (flow runs and their report artifacts)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="supportflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    ingest = commands.add_parser("ingest", help="ingest ticket exports (CSV, JSONL, Zendesk JSON) into the lake")
    ingest.add_argument("paths", nargs="+")
    ingest.add_argument("--source", help="the source system's name (default: the file's name)")
    ingest.add_argument("--format", choices=["csv", "jsonl", "zendesk"], help="default: from the file's suffix")
    ingest.set_defaults(run=cmd_ingest)
    commands.add_parser("validate", help="validate the lake against the data contracts and cut a snapshot").set_defaults(run=cmd_validate)
    train = commands.add_parser("train", help="fine-tune the intent classifier on the latest snapshot, register it, gate promotion")
    train.add_argument("--profile", choices=["quick", "full"], help="default: SUPPORTFLOW_TRAIN_PROFILE (quick)")
    train.set_defaults(run=cmd_train)
    commands.add_parser("rollback", help="move the classifier's champion alias back to the previous champion").set_defaults(
        run=cmd_rollback
    )
    commands.add_parser("demo", help="run the main job end to end on BANKING77").set_defaults(run=cmd_demo)
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except SupportflowError as error:
        print(f"supportflow: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
