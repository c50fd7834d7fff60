"""The stack the serving benchmark measures: the production release (run `make demo` or bench/pipeline.py
first), served as `supportflow serve` serves it, plus a Rasa server with the DIET pipeline of the intent
benchmark's peer, trained on BANKING77, for `/model/parse`."""

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd

from bench.rasa_diet import CONFIG, write_nlu
from supportflow.dialogue.rasa_cli import rasa_environment, rasa_executable
from supportflow.lake import open_lake
from supportflow.processes import ManagedProcess
from supportflow.release.promote import current_release
from supportflow.release.stack import Ports, Stack, start_stack
from supportflow.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
PORTS = Ports(bot=3100, classifier=3101, rasa=5105, actions=5155)
DIET_PORT = 5205


def train_diet(folder: Path) -> Path:
    """The peer's model, trained once and kept (its 2-minute training is not what is measured)."""
    settings = get_settings()
    if (folder / "models" / "diet.tar.gz").exists():
        return folder / "models" / "diet.tar.gz"
    folder.mkdir(parents=True, exist_ok=True)
    train = pd.read_csv(ROOT / "examples" / "banking77" / "data" / "train.csv")
    (folder / "data").mkdir(exist_ok=True)
    write_nlu([{"text": t, "intent": i} for t, i in zip(train["text"], train["category"], strict=True)], folder / "data" / "nlu.yml")
    (folder / "config.yml").write_text(CONFIG.format(epochs=40, layers=0, char_features=20000))
    (folder / "domain.yml").write_text('version: "3.1"\nintents:\n' + "".join(f"  - {i}\n" for i in sorted(train["category"].unique())))
    started = time.perf_counter()
    subprocess.run(
        [str(rasa_executable(settings)), "train", "nlu", "--fixed-model-name", "diet", "--out", "models", "--quiet"],
        cwd=folder,
        env=rasa_environment(folder),
        check=True,
        capture_output=True,
    )
    print(f"DIET trained in {time.perf_counter() - started:.0f} s", flush=True)
    return folder / "models" / "diet.tar.gz"


@contextmanager
def served_stack(work: Path) -> Iterator[tuple[Stack, str, dict]]:
    settings = get_settings()
    production = current_release(open_lake(settings))
    model = settings.rasa_project_dir / "models" / "supportflow.tar.gz"
    if production is None:
        raise SystemExit(f"no release in {settings.lake_url}: run `make demo` (or bench/pipeline.py) first")
    diet_folder = ROOT / ".cache" / "bench-diet"
    diet_model = train_diet(diet_folder)
    diet = ManagedProcess(
        "rasa (DIET)",
        [
            str(rasa_executable(settings)),
            "run",
            "--enable-api",
            "--model",
            str(diet_model),
            "--port",
            str(DIET_PORT),
            "--interface",
            "127.0.0.1",
        ],
        diet_folder,
        rasa_environment(diet_folder),
        f"http://127.0.0.1:{DIET_PORT}/status",
        work / "logs" / "diet.log",
    )
    stack = start_stack(settings, settings.rasa_project_dir, model, work / "logs", PORTS, bundles=production.bundles)
    try:
        diet.start(timeout=600)
        versions = {
            "classifier": httpx.post(f"{stack.classifier_url}/model", json={}, timeout=10).json(),
            "release": production.release_id,
            "bundles": [production.bundles.classifier, production.bundles.bot],
            "rasa_peer": "DIET, 40 epochs, no transformer layers",
        }
        yield stack, f"http://127.0.0.1:{DIET_PORT}", versions
    finally:
        diet.stop()
        stack.stop()
