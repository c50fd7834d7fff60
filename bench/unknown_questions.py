"""Questions a desk's bot has no answer for, measured on the served bot: how many it hands off, how many it answers
wrongly. Any workspace (default: Tasklane, `examples/saas`).

The open-intent benchmark (`open_intent.py`) measures the classifier's detector alone. A customer meets the whole
bot, where a question outside every intent may also be caught by the threshold (offered a choice, then "none of
those", then a person) or answered from the closest intent's article. So this holds a share of the desk's intents
out, seeded, as if the desk had never heard of them: their tickets, catalogue entries and articles are removed from
a copy of the workspace, which goes through `supportflow pipeline` and `supportflow evaluate --file` as a desk's
would. The file evaluated is the snapshot's test split (the known intents, never trained on) and every ticket of
the held-out intents, which `evaluate` counts apart as outside the catalogue. An intent the desk's own dialogue
files name (a rule, a story, a form) is never held out: removing it would break the dialogue, not test the bot.

Writes bench/results/unknown_questions_<desk>.json: the held-out intents, the known intents' outcomes and the
outside-the-catalogue ones (handed off is right), with the evaluation's report beside them.

    .venv/bin/python bench/unknown_questions.py [--workspace DIR] [--held-out 0.25] [--seed 0] [--profile quick|full]
"""

import argparse
import json
import os
import platform
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the repository's `bench` package importable
from bench.pipeline import fresh_store  # noqa: E402
from bench.unseen_desk import last_json, run  # noqa: E402
from supportflow.kb.loaders import split_front_matter  # noqa: E402
from supportflow.lake import open_lake  # noqa: E402
from supportflow.release.resolution import OUTCOMES, Outcome, OutcomeCounts, labelled_export  # noqa: E402
from supportflow.settings import Settings  # noqa: E402
from supportflow.validate.catalogue import load_catalogue  # noqa: E402
from supportflow.validate.snapshot import latest_snapshot, read_split  # noqa: E402
from supportflow.workspace import load_workspace  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def held_out_intents(desk: Path, share: float, seed: int) -> tuple[list[str], list[str]]:
    """`round(share * n)` of the catalogue's intents, seeded, among those its dialogue files never name; and those
    that stay."""
    intents = list(load_catalogue(desk / "intents.yaml").specs)
    dialogue = " ".join(path.read_text() for path in (desk / "domain").rglob("*.yml")) if (desk / "domain").is_dir() else ""
    free = sorted(intent for intent in intents if intent not in dialogue)
    count = min(round(share * len(intents)), len(free))
    held = sorted(np.random.default_rng(seed).choice(free, size=count, replace=False).tolist())
    return held, [intent for intent in intents if intent not in held]


def desk_without(source: Path, desk: Path, held: list[str]) -> pd.DataFrame:
    """A copy of the workspace that never heard of `held`: its tickets (every source, read as ingest reads it, into one
    CSV), catalogue entries and articles without them. Returns the held-out intents' tickets."""
    shutil.copytree(source, desk)
    workspace = load_workspace(desk)
    settings = Settings(workspace=desk)
    tickets = pd.concat(
        [
            labelled_export(settings, path, ticket_source.format, ticket_source.field_map, ticket_source.encoding).frame
            for paths, ticket_source in workspace.ticket_files()
            for path in paths
        ],
        ignore_index=True,
    )
    config = yaml.safe_load((desk / "supportflow.yaml").read_text())
    (desk / "data").mkdir(exist_ok=True)
    tickets[~tickets["intent"].isin(held)].to_csv(desk / "data" / "known_tickets.csv", index=False)
    config["tickets"] = [{"path": "data/known_tickets.csv", "source": config.get("name", desk.name)}]
    (desk / "supportflow.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    catalogue = yaml.safe_load((desk / "intents.yaml").read_text())
    catalogue["intents"] = [entry for entry in catalogue["intents"] if (entry if isinstance(entry, str) else entry["name"]) not in held]
    (desk / "intents.yaml").write_text(yaml.safe_dump(catalogue, sort_keys=False, allow_unicode=True))
    for folder in workspace.kb_sources():  # resolved inside the copy
        for article in folder.rglob("*.md"):
            if split_front_matter(article.read_text())[0].get("intent") in held:
                article.unlink()
    return tickets[tickets["intent"].isin(held)]


def with_rates(counts: OutcomeCounts, outcomes: tuple[Outcome, ...]) -> dict[str, float]:
    return {**counts.model_dump(), **{f"{outcome}_rate": round(counts.rate(outcome), 4) for outcome in outcomes}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=ROOT / "examples" / "saas")
    parser.add_argument("--held-out", type=float, default=0.25, help="the share of the catalogue's intents held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", choices=["quick", "full"], default="quick")
    parser.add_argument("--folder", type=Path, default=ROOT / ".run" / "unknown-questions")
    parser.add_argument("--out", type=Path, help="default: bench/results/unknown_questions_<desk>.json")
    args = parser.parse_args()
    shutil.rmtree(args.folder, ignore_errors=True)
    name = load_workspace(args.workspace).config.name
    desk = args.folder / name
    held, known = held_out_intents(args.workspace, args.held_out, args.seed)
    if not held:
        raise SystemExit(f"{args.workspace}: no intent to hold out ({args.held_out:.0%} of those no dialogue file names)")
    print(f"held out {len(held)} of {len(held) + len(known)} intents: {', '.join(held)}", flush=True)
    unknown = desk_without(args.workspace.resolve(), desk, held)
    stores = args.folder / "stores"
    env = {**os.environ, **fresh_store(stores, args.profile), "SUPPORTFLOW_RESULTS_DIR": str(args.folder / "results")}
    try:
        summary = last_json(run(["--workspace", str(desk), "pipeline", "--json"], env))
        lake = open_lake(Settings(lake_url=str(stores / "lake"), workspace=desk))
        tested = read_split(lake, latest_snapshot(lake).snapshot_id, "test")[["text", "intent"]]
        asked = pd.concat([tested, unknown[["text", "intent"]]], ignore_index=True)
        asked.to_csv(args.folder / "asked.csv", index=False)
        report = last_json(run(["--workspace", str(desk), "evaluate", "--file", str(args.folder / "asked.csv"), "--json"], env))
    finally:
        run(["--workspace", str(desk), "stop"], env)  # the background Prefect server the commands started
    outside = OutcomeCounts.model_validate(report["outside_catalogue"])
    inside = OutcomeCounts(**{key: report[key] - getattr(outside, key) for key in (*OUTCOMES, "errors")})
    result = {
        "workspace": name,
        "held_out": held,
        "known_intents": len(known),
        "seed": args.seed,
        "known": with_rates(inside, ("answered_right", "answered_wrong", "handed_off")),
        "outside_catalogue": with_rates(outside, ("handed_off", "answered_wrong")),
        "classifier_test_accuracy": summary["training"]["test_accuracy"],
        "profile": args.profile,
        "ood_quantile": Settings().ood_quantile,
        "evaluation": report,
        "measured_on": f"{os.cpu_count()} cores, {platform.machine()}",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out = args.out or RESULTS / f"unknown_questions_{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("held_out", "known", "outside_catalogue")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
