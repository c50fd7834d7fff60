"""Soak: multi-turn conversations through HAProxy for ten minutes, against two replicas and against one.

Each wrk connection holds one conversation at a time, its own thread, so a turn's reply (the conversation's id
and token) is read before its next turn is sent: conversations of `--turns` messages, drawn from the desk's
labelled test messages, then a new one. The stack is the demo's production classifier (`make demo` first) and a
Rasa project and model this code generates and trains for it, served from the source tree as
supportflow.release.replicas starts it, on shared stores the benchmark starts itself (PostgreSQL for the handoff
queue and Rasa's trackers, Redis for Rasa's locks, a scratch lake for the turn log unless `--turns-lake` keeps
it), so nothing reaches the working copy's queue or turn log. Writes bench/results/soak.json.

Every process (wrk included) shares the machine's cores, so on a small machine the figures bound the CPU, not
the design: `bound` in the JSON says so.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

LUA = """
local messages = {MESSAGES}
local turns = {TURNS}
local conversation, token, turn = nil, nil, 0
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  math.randomseed(seed * 7919 + os.time())
end

function request()
  local message = messages[math.random(#messages)]
  if conversation == nil then
    return wrk.format("POST", "/chat", {["Content-Type"] = "application/json"}, '{"message": ' .. message .. '}')
  end
  local headers = {["Content-Type"] = "application/json", ["X-Conversation-Token"] = token}
  return wrk.format("POST", "/chat", headers, '{"conversation_id": "' .. conversation .. '", "message": ' .. message .. '}')
end

function response(status, headers, reply)
  if status ~= 200 then
    conversation, turn = nil, 0
    return
  end
  if conversation == nil then
    conversation = reply:match('"conversation_id"%s*:%s*"([^"]+)"')
    token = reply:match('"conversation_token"%s*:%s*"([^"]+)"')
    turn = 0
  end
  turn = turn + 1
  if turn >= turns or conversation == nil or token == nil then
    conversation, turn = nil, 0
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'SOAK {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def wrk_script(folder: Path, messages: list[str], turns: int) -> Path:
    quoted = ", ".join(json.dumps(json.dumps(message)) for message in messages)  # Lua string literals of JSON strings
    path = folder / "soak.lua"
    path.write_text(LUA.replace("{MESSAGES}", "{" + quoted + "}").replace("{TURNS}", str(turns)))
    return path


def soak(url: str, script: Path, connections: int, seconds: int) -> dict[str, float]:
    """One wrk thread per connection, so each thread's conversation sees its own replies in order."""
    command = ["wrk", f"-t{connections}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), f"{url}/chat"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("SOAK "))
    figures = json.loads(line.removeprefix("SOAK "))
    errors = sum(figures[k] for k in ("connect", "read", "write", "status", "timeout"))
    duration_s = figures["duration_us"] / 1e6
    return {
        "duration_s": round(duration_s, 1),
        "connections": connections,
        "requests": figures["requests"],
        "errors": errors,
        "errors_by_kind": {k: figures[k] for k in ("connect", "read", "write", "status", "timeout")},
        "p50_ms": round(figures["p50_us"] / 1000, 1),
        "p99_ms": round(figures["p99_us"] / 1000, 1),
        "max_ms": round(figures["max_us"] / 1000, 1),
        "rps": round(figures["requests"] / duration_s, 1),
    }


def desk_messages(settings: object, limit: int = 200) -> list[str]:
    """The desk's own held-out messages: what its customers ask."""
    from supportflow.release.resolution import snapshot_test_split

    return snapshot_test_split(settings).frame["text"].drop_duplicates().head(limit).tolist()


def dialogue_for(settings: object, folder: Path) -> object:
    """The production classifier's Rasa project and model, generated and trained by this code into `folder`: the
    working copy's `.rasa/` may come from an older release, whose actions speak another contract to the bot."""
    from supportflow.dialogue.build import build_dialogue
    from supportflow.lake import open_lake

    own = settings.model_copy(update={"rasa_project_dir": folder, "dialogue_experiment": "bench-soak-dialogue"})
    return build_dialogue(own, open_lake(own))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--turns", type=int, default=3, help="messages per conversation")
    parser.add_argument("--replicas", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    parser.add_argument("--turns-lake", type=Path, help="keep the soak's turn log in this folder (default: a scratch one, removed)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (or `make system-deps`)")
    sys.path.insert(0, str(ROOT))

    from supportflow.release.production import alias_version
    from supportflow.release.replicas import start_replicas
    from supportflow.settings import get_settings
    from supportflow.tracking import PRODUCTION
    from tests.servers import running_postgres, running_redis

    settings = get_settings()
    version, _ = alias_version(settings, PRODUCTION)
    messages = desk_messages(settings)
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp, running_postgres() as postgres, running_redis() as redis_url:
        folder = Path(tmp)
        dialogue = dialogue_for(settings, folder / "rasa")
        script = wrk_script(folder, messages, args.turns)
        for count in args.replicas:
            run = folder / f"replicas-{count}"
            lake = args.turns_lake / f"replicas-{count}" if args.turns_lake else run / "lake"
            stores = settings.model_copy(
                update={
                    "follow_production": False,
                    "model_version": version,
                    "lake_url": str(lake.resolve()),
                    "handoff_db_url": postgres.new_database(),
                    "rasa_tracker_store_url": postgres.new_database().replace("+psycopg", ""),  # Rasa has psycopg2
                    "rasa_lock_store_url": redis_url,
                }
            )
            with start_replicas(stores, dialogue.project, dialogue.model, run, count) as stack:
                for message in messages[:20]:  # warm every replica's caches before the clock starts
                    httpx.post(f"{stack.bot_url}/chat", json={"message": message}, timeout=60)
                started = time.perf_counter()
                results[f"replicas_{count}"] = soak(stack.bot_url, script, args.connections, args.seconds)
                print(f"{count} replica(s): {results[f'replicas_{count}']} in {time.perf_counter() - started:.0f} s", flush=True)
    if "replicas_1" in results and "replicas_2" in results:
        results["throughput_ratio"] = round(results["replicas_2"]["rps"] / results["replicas_1"]["rps"], 2)
    results["model_version"] = version
    results["method"] = (
        f"wrk, {args.connections} connections each holding one conversation of {args.turns} turns at a time, for {args.seconds} s "
        "per replica count, through HAProxy round-robin; every process on this machine"
    )
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    results["bound"] = "CPU: every replica, Rasa server, action server, the classifier, HAProxy and wrk share these cores"
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
