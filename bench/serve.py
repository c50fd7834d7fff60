"""Serving latency and throughput, four endpoints measured the same way in one run, with wrk.

noop (a BentoML endpoint returning a constant: the framework's floor here), classify, chat (no LLM)
and rasa_parse (Rasa's own /model/parse with its DIET pipeline: the peer). wrk is a compiled load
generator, so the client is not the bottleneck. Writes bench/results/serve_latency.json.
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REST_SECONDS = 45

LUA_POST = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {BODIES}
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, bodies[(n % #bodies) + 1])
end
"""

QUESTIONS = [
    "my card still has not arrived",
    "how do I top up with a bank transfer?",
    "why was I charged a fee for a cash withdrawal?",
    "I think someone used my card without permission",
    "what is the exchange rate for euros?",
]


def lua_script(folder: Path, name: str, bodies: list[dict]) -> Path:
    quoted = ", ".join(json.dumps(json.dumps(body)) for body in bodies)
    path = folder / f"{name}.lua"
    path.write_text(LUA_POST.replace("{BODIES}", "{" + quoted + "}"))
    return path


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, float]:
    threads = min(connections, 2)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))  # wrk pads "1.43s " with a space
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    timeouts = re.search(r"Socket errors: .*timeout (\d+)", out)
    completed = re.search(r"(\d+) requests in", out)
    return {
        # No latency distribution means no request completed in time: recorded as such, not skipped.
        "p50_ms": round(_ms(latency["50"]), 2) if "50" in latency else None,
        "p99_ms": round(_ms(latency["99"]), 2) if "99" in latency else None,
        "rps": round(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), 1),
        "completed": int(completed.group(1)) if completed else 0,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "timeouts": int(timeouts.group(1)) if timeouts else 0,
        **({} if "50" in latency else {"wrk_output": out[-800:]}),  # why there is no distribution, kept to read
    }


def warm_up(url: str, body: dict, requests: int = 20) -> None:
    """A few real requests first: lazy loading (tokenizers, the knowledge base's embedder) is not serving latency."""
    import httpx

    for _ in range(requests):
        httpx.post(url, json=body, timeout=120)


def single(name: str, url: str, script: Path, seconds: int, body: dict) -> dict[str, float]:
    warm_up(url, body)
    result = run_wrk(url, script, 1, seconds)
    print(name, "c=1", result, flush=True)
    return result


def loaded(name: str, url: str, script: Path, seconds: int, body: dict) -> dict[str, float]:
    result = run_wrk(url, script, 32, seconds)
    print(name, "c=32", result, flush=True)
    return result


def medians(rounds: list[dict[str, float]]) -> dict[str, object]:
    """Per figure, the median over rounds (the machine is noisy); every round is kept beside it."""
    merged: dict[str, object] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds if r[key] is not None]
        if key in ("errors", "timeouts_c32"):
            merged[key] = sum(values)
        else:
            merged[key] = round(statistics.median(values), 2) if values else None
    merged["rounds"] = rounds
    return merged


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_latency.json")
    parser.add_argument("--store", type=Path, help="a store bench/pipeline.py left (default: the project's own, from `make demo`)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (or `make system-deps`)")

    sys.path.insert(0, str(ROOT))  # run as a script: make the repository's `bench` package importable
    if args.store:
        from bench.pipeline import fresh_store

        os.environ.update({k: v for k, v in fresh_store(args.store.resolve(), "full").items() if k != "SUPPORTFLOW_TRAIN_PROFILE"})
    from bench.serve_stack import served_stack  # the demo's trained stack plus a DIET Rasa model

    with tempfile.TemporaryDirectory() as tmp, served_stack(Path(tmp)) as (stack, diet_url, versions):
        folder = Path(tmp)
        classify = lua_script(folder, "classify", [{"texts": [q]} for q in QUESTIONS])
        chat = lua_script(folder, "chat", [{"message": q} for q in QUESTIONS])  # each a new conversation, named by the bot
        parse = lua_script(folder, "parse", [{"text": q} for q in QUESTIONS])
        noop = lua_script(folder, "noop", [{}])
        endpoints = {
            "noop": (f"{stack.classifier_url}/noop", noop, {}),
            "classify": (f"{stack.classifier_url}/classify", classify, {"texts": QUESTIONS[:1]}),
            "chat": (f"{stack.bot_url}/chat", chat, {"message": QUESTIONS[0]}),
            "rasa_parse": (f"{diet_url}/model/parse", parse, {"text": QUESTIONS[0]}),
        }
        # Rounds interleave the endpoints, so a noisy minute on the machine does not land on one of them only.
        # Within a round every endpoint is measured at c=1 first, then at c=32: after a burst, BentoML's adaptive
        # batching keeps the wait it learnt under load for about half a minute (measured: classify at c=1 went
        # from 4 ms to 19.5 ms right after c=32), and c=1 here means a service at rest.
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in endpoints}
        for round_number in range(args.rounds):
            if round_number:
                time.sleep(REST_SECONDS)  # c=1 measures services at rest, not recovering from the last burst
            at_rest = {name: single(name, url, script, args.seconds, body) for name, (url, script, body) in endpoints.items()}
            for name, (url, script, body) in endpoints.items():
                burst = loaded(name, url, script, args.seconds, body)
                rounds[name].append(
                    {
                        "p50_ms": at_rest[name]["p50_ms"],
                        "p99_ms": at_rest[name]["p99_ms"],
                        "rps_c32": burst["rps"],
                        "p50_ms_c32": burst["p50_ms"],
                        "errors": at_rest[name]["non_2xx"] + burst["non_2xx"],
                        "timeouts_c32": burst["timeouts"],
                    }
                )
        results: dict[str, object] = {name: medians(measured) for name, measured in rounds.items()}
    results["versions"] = versions
    results["method"] = f"medians of {args.rounds} interleaved rounds of {args.seconds} s per endpoint and concurrency"
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; client wrk on the same machine"
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
