"""How long `supportflow ingest` of a 3-row CSV takes as a person runs it (a new process each time), with
Prefect's ephemeral API per command against the one background server the CLI starts once and reuses.

Everything lives in a temporary store (lake, MLflow, run dir, PREFECT_HOME), so the working copy is not
touched. One untimed run first creates the temporary Prefect database (its migrations are a one-off,
whichever way the API is served). Each repetition then times, in turn: a command on the ephemeral API,
`supportflow stop` then a first command (it starts the server), and warm commands (they reuse it); taking
them in turn spreads the shared machine's changing load over all three. Also timed: importing the ingest
flow alone, the floor a command cannot go under. Writes bench/results/cli.json.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "cli.json"
CSV = (
    "text,intent\nmy card has not arrived yet,card_arrival\n"
    "how do I top up by bank transfer,top_up_by_bank_transfer_charge\nI lost my card,lost_or_stolen_card\n"
)


def environment(store: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPPORTFLOW_", "PREFECT_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        PREFECT_HOME=str(store / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        SUPPORTFLOW_LAKE_URL=str(store / "lake"),
        SUPPORTFLOW_RUN_DIR=str(store / "run"),
        SUPPORTFLOW_MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}",
        SUPPORTFLOW_GX_ROOT=str(store / "gx"),
        SUPPORTFLOW_KB_DIR=str(store / "kb"),
        SUPPORTFLOW_HANDOFF_DB_URL=f"sqlite:///{store / 'handoff.db'}",
        HF_HUB_OFFLINE="1",
    )
    return env


def run(command: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return seconds, done


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--warm", type=int, default=2, help="warm commands per repetition")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "supportflow.cli"]
    times: dict[str, list[float]] = {"ephemeral": [], "first": [], "warm": [], "import_only": []}
    with tempfile.TemporaryDirectory(prefix="supportflow-bench-cli-") as folder:
        store = Path(folder)
        tickets = store / "tickets.csv"
        tickets.write_text(CSV)
        ingest = [*cli, "ingest", str(tickets)]
        env = environment(store)
        ephemeral = {**env, "SUPPORTFLOW_PREFECT_SERVER": "ephemeral"}
        background = {**env, "SUPPORTFLOW_PREFECT_SERVER": "background"}
        load_before = os.getloadavg()
        try:
            run(ingest, ephemeral)  # creates the temporary Prefect database: untimed
            for repetition in range(args.repetitions):
                seconds, done = run(ingest, ephemeral)
                assert "Starting temporary server" in done.stderr, done.stderr
                times["ephemeral"].append(seconds)
                run([*cli, "stop"], background)
                seconds, done = run(ingest, background)
                assert "starting a Prefect server in the background" in done.stderr, done.stderr
                times["first"].append(seconds)
                url = json.loads((store / "run" / "prefect-server.json").read_text())["api_url"].removesuffix("/api")
                for _ in range(args.warm):
                    seconds, done = run(ingest, background)
                    assert "starting a Prefect server" not in done.stderr and f"View at {url}/runs/" in done.stderr, done.stderr
                    assert "read 3 = written 0 + duplicates 3" in done.stdout, done.stdout
                    times["warm"].append(seconds)
                seconds, _ = run([sys.executable, "-c", "import flows.ingest"], env)
                times["import_only"].append(seconds)
                latest = ", ".join(f"{name} {values[-1]:.1f} s" for name, values in times.items())
                print(f"repetition {repetition + 1}: {latest}", flush=True)
        finally:
            subprocess.run([*cli, "stop"], cwd=ROOT, env=background, capture_output=True, timeout=120)
        load_after = os.getloadavg()
    medians = {name: round(statistics.median(values), 1) for name, values in times.items()}
    result = {
        "command": "supportflow ingest <3-row CSV>, a new process each time, fresh temporary store",
        "repetitions": args.repetitions,
        "median_seconds": medians,
        "seconds": {name: [round(value, 2) for value in values] for name, values in times.items()},
        "warm_saves_seconds": round(medians["ephemeral"] - medians["warm"], 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
