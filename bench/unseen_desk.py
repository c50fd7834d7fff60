"""A desk the project has never seen, through the README's commands alone: StackFAQ's web-application help desk.

StackFAQ (`../shared/data/stackfaq`, read there and never copied into the project) holds 125 help-desk threads
about web applications, each with paraphrased customer questions and the community's answers. Its threads are the
desk's intents and its paraphrases the labelled tickets; no code or file of the project was written for it.

The run does what a new user does: `supportflow init DESK --from-tickets queries.csv` (the export, with a field
map), writes the articles the way a person would fill the drafts (each thread's question as the title, its
top answer as the body), then `supportflow pipeline` and `supportflow evaluate` with the workspace chosen, on
stores of its own under `.run/unseen-desk/`.
Writes `bench/results/resolution_<desk>.json` (through `supportflow evaluate`) and prints the figures.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the repository's `bench` package importable
from bench.pipeline import fresh_store  # noqa: E402

STACKFAQ = ROOT.parent / "shared" / "data" / "stackfaq"
SUPPORTFLOW = str(Path(sys.executable).with_name("supportflow"))


def run(args: list[str], env: dict[str, str]) -> str:
    print("$ supportflow", " ".join(args), flush=True)
    done = subprocess.run([SUPPORTFLOW, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"supportflow {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return done.stdout


def last_json(output: str) -> dict:
    """The JSON document a `--json` command printed last (anything a library printed before it is skipped)."""
    start = output.rindex("\n{\n") + 1 if "\n{\n" in output else 0  # the trainer prints its own {'loss': ...} lines
    return json.loads(output[start:])


def write_articles(desk: Path) -> int:
    """What a person does after `init`: replace each draft with the answer (here, the thread's top answer)."""
    pairs = pd.read_csv(STACKFAQ / "faq_pairs.csv").sort_values(["thread_id", "answer_rank"])
    written = 0
    for thread, group in pairs.groupby("thread_id"):
        draft = desk / "kb" / f"{thread}.md"
        if not draft.exists():
            continue
        top = group.iloc[0]
        title = str(top["question"]).replace(" [closed]", "").replace(" [duplicate]", "")
        meta = yaml.safe_dump({"id": thread, "title": title, "intent": thread}, sort_keys=False, allow_unicode=True)
        draft.write_text(f"---\n{meta}---\n\n# {title}\n\n{top['answer']}\n")
        written += 1
    return written


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", type=Path, default=ROOT / ".run" / "unseen-desk")
    parser.add_argument("--profile", choices=["quick", "full"], default="full", help="the training profile (a desk's own bot: full)")
    parser.add_argument("--resume", action="store_true", help="keep the folder of an earlier run: every stage re-runs from its cache")
    args = parser.parse_args()
    if args.folder.exists() and not args.resume:
        shutil.rmtree(args.folder)
    stores = args.folder / "stores"
    env = {**os.environ, **fresh_store(stores, args.profile)}  # the pipeline benchmark's stores, here for this desk
    env["SUPPORTFLOW_RESULTS_DIR"] = str(ROOT / "bench" / "results")  # its evaluation is one of the project's results
    desk = args.folder / "webapps"
    field_map = json.dumps({"text": "query", "intent": "thread_id"})
    if not desk.exists():
        run(["init", str(desk), "--from-tickets", str(STACKFAQ / "queries.csv"), "--field-map", field_map], env)
        print(f"articles written: {write_articles(desk)}", flush=True)
    summary = last_json(run(["--workspace", str(desk), "pipeline", "--json"], env))
    training = summary["training"]
    print(f"pipeline: {summary['total_seconds']:.0f} s; classifier test accuracy {training['test_accuracy']:.4f}", flush=True)
    report = last_json(run(["--workspace", str(desk), "evaluate", "--json"], env))
    for key in ("answered_right", "answered_wrong", "clarified", "handed_off", "n", "errors"):
        print(f"  {key}: {report[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
