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
    print("where to look:")
    print(f"  lake:          {settings.lake_url}/ (tickets/, quarantine/, snapshots/)")
    print(f"  data docs:     {summary.snapshot.validation.data_docs}")
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
