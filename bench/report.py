"""Render bench/results/*.json as the README's results table (between the results markers).

`python bench/report.py` rewrites the table; `--check` fails when the README disagrees with the JSON.
"""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"

Row = tuple[str, str, str, str]  # what, measured, target, file


def _ingest(r: dict) -> list[Row]:
    return [
        (
            f"Ingest + validate {r['rows']:,} synthetic tickets",
            f"{r['rows_per_s']:,} rows/s ({r['seconds']} s), peak {r['peak_rss_mb']:,} MB; "
            f"{r['accepted']:,} accepted, {r['quarantined']:,} quarantined",
            ">= 150,000 rows/s, memory bounded",
            "ingest.json",
        )
    ]


RENDERERS: dict[str, Callable[[dict], list[Row]]] = {"ingest.json": _ingest}


def table() -> str:
    rows: list[Row] = []
    for name, render in RENDERERS.items():
        path = RESULTS / name
        if path.exists():
            rows.extend(render(json.loads(path.read_text())))
    lines = ["| what | measured | target | result file |", "|---|---|---|---|"]
    lines += [f"| {what} | {measured} | {target} | `bench/results/{file}` |" for what, measured, target, file in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    readme = README.read_text()
    before, rest = readme.split(START, 1)
    _, after = rest.split(END, 1)
    updated = f"{before}{START}\n{table()}\n{END}{after}"
    if args.check:
        if updated != readme:
            print("README results table differs from bench/results; run python bench/report.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
