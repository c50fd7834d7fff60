"""Rasa 3.6's own DIETClassifier on BANKING77: runs inside `.venv-rasa` (Python 3.10), called by bench/intent.py.

Reads `train.jsonl` and `test.jsonl` ({"text", "intent"} per line) from the work folder, writes a Rasa
NLU project there, trains it with `rasa train nlu`, parses every test text with the trained model and
writes `predictions.json` ({"train_seconds", "predicted": [...]}) for the caller to score.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")

# Rasa's recommended English pipeline without entity extraction; char n-grams capped so that an
# epoch over 9,000 messages stays within seconds on 2 cores.
CONFIG = """\
recipe: default.v1
language: en
assistant_id: supportflow-bench
pipeline:
  - name: WhitespaceTokenizer
  - name: CountVectorsFeaturizer
  - name: CountVectorsFeaturizer
    analyzer: char_wb
    min_ngram: 1
    max_ngram: 4
    max_features: {char_features}
  - name: DIETClassifier
    epochs: {epochs}
    number_of_transformer_layers: {layers}
    entity_recognition: False
    constrain_similarities: True
    random_seed: 13
policies: []
"""


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_nlu(rows: list[dict], path: Path) -> None:
    by_intent: dict[str, list[str]] = {}
    for row in rows:
        by_intent.setdefault(row["intent"], []).append(row["text"])
    lines = ['version: "3.1"', "nlu:"]
    for intent, texts in sorted(by_intent.items()):
        lines.append(f"- intent: {intent}")
        lines.append("  examples: |")
        lines.extend(f"    - {json.dumps(' '.join(text.split()))[1:-1]}" for text in texts)
    path.write_text("\n".join(lines) + "\n")


async def parse_all(model_path: Path, texts: list[str]) -> list[str]:
    from rasa.core.agent import Agent

    agent = Agent.load(str(model_path))
    return [(await agent.parse_message(text))["intent"]["name"] for text in texts]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--char-features", type=int, default=20000)
    parser.add_argument("--transformer-layers", type=int, default=2)
    args = parser.parse_args()
    work: Path = args.work
    (work / "data").mkdir(parents=True, exist_ok=True)
    write_nlu(read_jsonl(work / "train.jsonl"), work / "data" / "nlu.yml")
    (work / "config.yml").write_text(CONFIG.format(epochs=args.epochs, layers=args.transformer_layers, char_features=args.char_features))
    (work / "domain.yml").write_text('version: "3.1"\n')
    started = time.perf_counter()
    command = ["rasa", "train", "nlu", "--config", "config.yml", "--nlu", "data/nlu.yml", "--out", "models", "--fixed-model-name", "diet"]
    subprocess.run([sys.executable, "-m", *command], cwd=work, check=True)
    train_seconds = time.perf_counter() - started
    test = read_jsonl(work / "test.jsonl")
    predicted = asyncio.run(parse_all(work / "models" / "diet.tar.gz", [row["text"] for row in test]))
    (work / "predictions.json").write_text(json.dumps({"train_seconds": train_seconds, "predicted": predicted}))


if __name__ == "__main__":
    main()
